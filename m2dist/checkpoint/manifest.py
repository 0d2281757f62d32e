"""The manifest: every file of a checkpoint with its size and sha256.

A checkpoint directory counts as complete only if its manifest exists (it is written last, before the commit
rename) and every listed file exists with that size and checksum. Hashing is spread over ranks (file i goes to
rank i mod world) so that a large checkpoint is hashed in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import torch.distributed as dist

MANIFEST = "manifest.json"


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_files(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def _world():
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def hash_files(root: str, files: list[str], group=None) -> dict[str, dict]:
    """{file: {size, sha256}} computed cooperatively by all ranks (collective over ``group`` when distributed)."""
    rank, world = _world()
    mine = {f: {"size": os.path.getsize(os.path.join(root, f)), "sha256": sha256_file(os.path.join(root, f))}
            for i, f in enumerate(files) if i % world == rank}
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine, group=group)
        for part in parts:
            mine.update(part)
    return mine


def write_manifest(root: str, entries: dict[str, dict]) -> None:
    path = os.path.join(root, MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump({"version": 1, "files": entries}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def check(root: str, collective: bool = True) -> Optional[str]:
    """None if ``root`` is a complete checkpoint, else why not. Collective (every rank must call) when distributed
    and ``collective``; then all ranks return the same answer."""
    rank, world = _world() if collective else (0, 1)
    problem = None
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            entries = json.load(f)["files"]
    except FileNotFoundError:
        problem = "no manifest (never committed)"
    except (OSError, ValueError, KeyError) as exc:
        problem = f"unreadable manifest ({exc})"
    if problem is None:
        for i, (name, meta) in enumerate(sorted(entries.items())):
            full = os.path.join(root, name)
            if not os.path.isfile(full):
                problem = f"missing file {name}"
                break
            size = os.path.getsize(full)
            if size != meta["size"]:
                problem = f"{name} has {size} bytes, the manifest says {meta['size']} (torn write?)"
                break
            # Sizes are checked everywhere (cheap); each rank hashes its share of the files.
            if i % world == rank and sha256_file(full) != meta["sha256"]:
                problem = f"{name} fails its checksum"
                break
    if collective and world > 1:
        problems = [None] * world
        dist.all_gather_object(problems, problem)
        problem = next((p for p in problems if p), None)
    return problem
