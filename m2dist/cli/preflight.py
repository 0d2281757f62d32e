"""Pre-flight of ``m2dist train``: everything a run will need, checked before any work (process groups, model,
engine), so that a missing validation split or an unwritable checkpoint dir fails in one line at second 1, not at
the first evaluation or save after hours of training. Each rank checks for itself (the checks are cheap)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from m2dist.config import Config
from m2dist.config.loader import ConfigError


def world_size_from_env() -> int:
    """The world size the launcher describes (torchrun, the deepspeed launcher, srun, or 1 for a bare process)."""
    from launch.distributed import normalize_env

    env = dict(os.environ)
    normalize_env(env)
    return int(env["WORLD_SIZE"])


def _writable_dir(path: str, key: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".m2dist-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: {key} is not a writable directory ({exc.strerror or exc})") from None


def check_run(cfg: Config, world_size: int | None = None) -> None:
    """Raise ConfigError, one line naming the key and the file or value, for the first thing the run would lack."""
    world = world_size_from_env() if world_size is None else world_size
    tensor, context = cfg.parallel.tensor, cfg.parallel.context
    model_parallel = tensor * context
    if world % model_parallel:
        what = f"parallel.tensor={tensor}" if context == 1 else \
            f"parallel.tensor={tensor} x parallel.context={context} = {model_parallel}"
        raise ConfigError(f"{what} does not divide the world size {world} (the processes the launcher started); "
                          f"start a multiple of {model_parallel}, e.g. "
                          f"`torchrun --nproc_per_node={model_parallel} -m m2dist train ...`")
    t, data_parallel = cfg.trainer, world // model_parallel
    if t.global_batch_size % (t.micro_batch_size * data_parallel):
        divisor = f"parallel.tensor {tensor}" if context == 1 else f"(parallel.tensor {tensor} x parallel.context " \
            f"{context})"
        raise ConfigError(f"trainer.global_batch_size={t.global_batch_size} is not a multiple of "
                          f"trainer.micro_batch_size={t.micro_batch_size} x data-parallel size {data_parallel} "
                          f"(world {world} / {divisor})")

    d = cfg.data
    if d.kind != "image":
        if not d.tokenizer:
            raise ConfigError("data.tokenizer is empty: LM data needs the sentencepiece model it was prepared with")
        if not os.path.isfile(d.tokenizer):
            raise ConfigError(f"{d.tokenizer}: data.tokenizer does not exist (train one with `m2dist tokenizer "
                              f"train`)")
        from m2dist.data.tokenizer import load_sentencepiece

        load_sentencepiece(str(Path(d.tokenizer).resolve()))  # ConfigError naming the file if it is not a model
    if not d.path:
        raise ConfigError("data.path is empty: point it at an `m2dist prep` output directory")
    if d.remote is None:  # a remote split is fetched on demand: only streaming can tell
        from m2dist.data.checks import check_split

        check_split(Path(d.path) / d.train_split, "data.path + data.train_split")
        if t.eval_every > 0:
            check_split(Path(d.path) / d.eval_split, "data.path + data.eval_split, trainer.eval_every > 0")

    if t.resume not in ("auto", "none") and not os.path.isdir(t.resume):
        raise ConfigError(f"{t.resume}: trainer.resume is not a checkpoint directory (or use auto / none)")
    if cfg.deepspeed.config_file and not os.path.isfile(cfg.deepspeed.config_file):
        raise ConfigError(f"{cfg.deepspeed.config_file}: deepspeed.config_file does not exist")
    _writable_dir(t.run_dir, "trainer.run_dir")
    _writable_dir(cfg.checkpoint.dir, "checkpoint.dir")
