"""The names inside ``checkpoint.dir`` (see the package docstring) and how checkpoints are found there."""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from m2dist.checkpoint import manifest

STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
RANKS_DIR = "ranks"
LATEST = "latest"
# The one place for temporary conversions made while resuming at another layout (DeepSpeed's universal form, a
# ZeRO-0 checkpoint cut for another tensor-parallel size). Each is removed as soon as every rank has loaded it, and
# whatever a dead job left here is removed when the next job starts.
CONVERSIONS_DIR = ".conversions"
LEGACY_CONVERSION_DIRS = (".universal",)  # where earlier versions kept the universal copies (never pruned)


def step_of(path: str) -> int:
    m = STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    if not m:
        raise ValueError(f"{path} is not a checkpoint directory (expected .../step_<N>)")
    return int(m.group(1))


def list_checkpoints(root: str) -> list[str]:
    """Committed-looking checkpoint directories (step_<N>), newest first. Temporary ones are never listed."""
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if STEP_DIR.match(n) and os.path.isdir(os.path.join(root, n))]
    return [os.path.join(root, n) for n in sorted(names, key=lambda n: -int(STEP_DIR.match(n).group(1)))]


def verify_checkpoint(path: str, collective: bool = True) -> Optional[str]:
    """None if ``path`` is a complete checkpoint, else the reason (see :func:`manifest.check`)."""
    return manifest.check(path, collective=collective)


def read_trainer_state(path: str) -> dict:
    with open(os.path.join(path, TRAINER_STATE)) as f:
        return json.load(f)


def read_config(path: str):
    """The resolved run config saved in checkpoint ``path``, as a :class:`m2dist.config.Config`."""
    import yaml

    from m2dist.config import config_from_dict

    with open(os.path.join(path, CONFIG_FILE)) as f:
        return config_from_dict(yaml.safe_load(f))


def resolve_checkpoint(path: str) -> str:
    """``path`` itself for a checkpoint directory (``.../step_<N>``); for a checkpoint root (``checkpoint.dir``,
    holding ``latest``), the checkpoint ``latest`` names."""
    latest = os.path.join(path, LATEST)
    if not os.path.exists(os.path.join(path, manifest.MANIFEST)) and os.path.isfile(latest):
        with open(latest) as f:
            return os.path.join(path, f.read().strip())
    return path
