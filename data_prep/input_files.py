"""Turning ``--input FILES/DIRS`` into the sorted list of files a pipeline reads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

from m2dist.config.loader import ConfigError

log = logging.getLogger("data_prep")


def expand_inputs(inputs: Iterable[str], suffixes: Sequence[str], what: str,
                  ignored: Optional[list[str]] = None) -> list[str]:
    """Files given directly are taken as they are; directories are searched recursively for ``suffixes``.

    The result is sorted and de-duplicated, so a run's part numbering depends only on the set of inputs. Files of
    other types found in a directory are not read; they are logged, and appended to ``ignored`` when given (the
    prep report lists them), so that a dump in an unexpected format is not silently skipped.
    """
    files: set[str] = set()
    others: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.add(str(path.resolve()))
        elif path.is_dir():
            found, skipped = [], []
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    (found if p.name.endswith(tuple(suffixes)) else skipped).append(p)
            if not found:
                kinds = f"; it holds {len(skipped)} files of other types (first: {skipped[0].name})" if skipped else ""
                raise ConfigError(f"{item}: no {what} files ({', '.join(suffixes)}) in this directory{kinds}")
            files.update(str(p.resolve()) for p in found)
            if skipped:
                log.warning("%s: ignoring %d files that are not %s input (%s), e.g. %s", item, len(skipped), what,
                            ", ".join(suffixes), skipped[0].name)
                others.extend(str(p.resolve()) for p in skipped)
        else:
            raise ConfigError(f"{item}: no such file or directory")
    if not files:
        raise ConfigError(f"no {what} input files given")
    if ignored is not None:
        ignored.extend(sorted(set(others)))
    return sorted(files)
