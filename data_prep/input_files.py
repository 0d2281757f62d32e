"""Turning ``--input FILES/DIRS`` into the sorted list of files a pipeline reads."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from m2dist.config.loader import ConfigError


def expand_inputs(inputs: Iterable[str], suffixes: Sequence[str], what: str) -> list[str]:
    """Files given directly are taken as they are; directories are searched recursively for ``suffixes``.

    The result is sorted and de-duplicated, so a run's part numbering depends only on the set of inputs.
    """
    files: set[str] = set()
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.add(str(path.resolve()))
        elif path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file() and p.name.endswith(tuple(suffixes))]
            if not found:
                raise ConfigError(f"{item}: no {what} files ({', '.join(suffixes)}) in this directory")
            files.update(str(p.resolve()) for p in found)
        else:
            raise ConfigError(f"{item}: no such file or directory")
    if not files:
        raise ConfigError(f"no {what} input files given")
    return sorted(files)
