"""Is a prepared split whole? Cheap checks (the index and file sizes, no reading of samples) that the readers and
the trainer's pre-flight run before any work, so that a missing, empty or truncated split is one line naming the
file, not an IndexError from inside streaming hours into a run. ``m2dist prep verify`` adds checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from m2dist.config.loader import ConfigError

INDEX = "index.json"


def read_index(split_dir: Path, what: str = "") -> dict:
    """The split's merged index; ConfigError if it is missing or unreadable. ``what`` says which key pointed here."""
    path = Path(split_dir) / INDEX
    where = f" ({what})" if what else ""
    if not path.is_file():
        raise ConfigError(f"{path}: missing{where}; prepare the split with `m2dist prep ... --split "
                          f"{Path(split_dir).name}`, or it did not finish")
    try:
        index = json.loads(path.read_text())
        shards = index["shards"]
        for shard in shards:
            shard["samples"], shard["raw_data"]["basename"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not an MDS index{where} ({type(exc).__name__}: {exc})") from None
    return index


def shard_problems(split_dir: Path, index: dict, hashes: bool = False) -> list[str]:
    """One line per shard file that is missing or whose size (and, with ``hashes``, checksum) differs from the
    index. The stored form is the compressed file when there is one (the raw one appears only once read)."""
    errors = []
    for shard in index["shards"]:
        stored = shard.get("zip_data") or shard["raw_data"]
        path = Path(split_dir) / stored["basename"]
        if not path.is_file():
            errors.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != stored["bytes"]:
            errors.append(f"{path}: {size} bytes, {INDEX} says {stored['bytes']} (truncated or replaced; "
                          f"re-run `m2dist prep`)")
            continue
        if hashes:
            data = path.read_bytes()
            for name, expected in (stored.get("hashes") or {}).items():
                if name in hashlib.algorithms_available and hashlib.new(name, data).hexdigest() != expected:
                    errors.append(f"{path}: {name} mismatch")
    return errors


def check_split(split_dir: Path, what: str = "") -> int:
    """Raise ConfigError (one line) unless the split has an index, at least one sample, and every shard file of the
    size the index records; return its number of samples."""
    split_dir = Path(split_dir)
    index = read_index(split_dir, what)
    samples = sum(s["samples"] for s in index["shards"])
    where = f" ({what})" if what else ""
    if samples == 0:
        raise ConfigError(f"{split_dir / INDEX}: the split has no samples{where}; its prep input was empty or all "
                          f"bad (see {split_dir / 'report.json'})")
    errors = shard_problems(split_dir, index)
    if errors:
        more = f" (and {len(errors) - 1} more shard files)" if len(errors) > 1 else ""
        raise ConfigError(errors[0] + more)
    return samples
