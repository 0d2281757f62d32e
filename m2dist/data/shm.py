"""Two jobs on one host: mosaicml-streaming's shared-memory prefixes, registered one job at a time, and stale ones
cleaned.

Every StreamingDataset names its shared memory ``/dev/shm/<prefix:06>_<name>`` and its file locks
``<tempdir>/<prefix:06>_<name>_filelock``, with a prefix that each rank finds by scanning for the first free one,
then checks against what its local leader registered. Two jobs that scan at the same time interleave: their
ranks see different free prefixes ("Internal error: shared memory registered does not match local leader"), or
both jobs take the same one and one unlinks the other's segments (its ranks then hang in a barrier). So the
prefix is taken under a host-wide lock (``registering_prefix``): the local leader of each node holds it while all
ranks of the job scan, register and attach, and other jobs wait that long (milliseconds).

Within one job, streaming's ranks race too: each creates a segment or, finding it exists, attaches after a 7 ms
sleep. The stdlib creates in two calls (``shm_open``, then ``ftruncate``), so an attacher that comes between them
maps a 0-byte file, "ValueError: cannot mmap an empty file", the job's end on a loaded host (seen in the suite on 2
busy cores). ``attach_waits_for_size`` makes the attach wait, up to ``ATTACH_WAIT_S``, until the creator has sized it.

Killed jobs leave their segments and file locks behind, and streaming never removes file locks: prefixes pile up,
and a stale segment can hold a prefix's name. ``clean_stale`` removes, under the same lock, the files of each
prefix that no process maps or holds open, owned by this user and older than a minute (a job that is not an
m2dist job, and takes no lock, is between creating and mapping a segment for microseconds, not a minute).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

SHM_DIR = Path("/dev/shm")
# In /dev/shm itself: the namespace it guards is that directory's, shared by every process of the host.
LOCK_NAME = "m2dist-streaming-prefix.lock"
_NAMES = ("locals", "barrier", "next_epoch", "cache_usage", "shard_states", "shard_access_times", "resume",
          "epoch_shape", "epoch_data")
STREAMING_SHM = re.compile(r"^(\d{6})_(%s)$" % "|".join(_NAMES))
STREAMING_FILELOCK = re.compile(r"^(\d{6})_(barrier|cache)_filelock$")
STALE_AFTER_S = 60.0
ATTACH_WAIT_S = 30.0


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Exclusive lock shared by every m2dist process of this host (a flock, released if the holder dies)."""
    root = SHM_DIR if SHM_DIR.is_dir() else Path(tempfile.gettempdir())
    fd = os.open(root / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _in_use() -> tuple[set[str], set[str]]:
    """Names of /dev/shm segments some readable process maps or holds open, and other paths held open."""
    segments, files = set(), set()
    shm_prefix = str(SHM_DIR) + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            with open(proc / "maps", "rb") as fh:
                for line in fh:
                    at = line.find(shm_prefix.encode())
                    if at >= 0:
                        segments.add(line[at + len(shm_prefix):].decode(errors="replace").strip()
                                     .removesuffix(" (deleted)"))
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(shm_prefix):
                    segments.add(target[len(shm_prefix):].removesuffix(" (deleted)"))
                elif target.startswith("/"):
                    files.add(target)
        except OSError:  # gone, or another user's (their segments are not ours to remove anyway)
            continue
    return segments, files


def clean_stale(tempdir: str | None = None, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Remove streaming's leftovers of dead jobs (see the module docstring); returns the paths removed.

    A prefix is kept whole if any of its segments is in use, any file of it is held open, is another user's, or is
    younger than ``stale_after_s``."""
    tempdir = tempdir or tempfile.gettempdir()
    by_prefix: dict[str, list[Path]] = defaultdict(list)
    for folder, pattern in ((SHM_DIR, STREAMING_SHM), (Path(tempdir), STREAMING_FILELOCK)):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            match = pattern.match(name)
            if match:
                by_prefix[match.group(1)].append(folder / name)
    if not by_prefix:
        return []
    segments, files = _in_use()
    live = {m.group(1) for m in map(STREAMING_SHM.match, segments) if m}
    uid, now, removed = os.getuid(), time.time(), []
    for prefix, paths in sorted(by_prefix.items()):
        if prefix in live or any(str(p) in files for p in paths):
            continue
        try:
            stats = [p.lstat() for p in paths]
        except OSError:
            continue
        if any(s.st_uid != uid or now - s.st_mtime < stale_after_s for s in stats):
            continue
        for p in paths:
            try:
                p.unlink()
                removed.append(str(p))
            except OSError:
                pass
    return removed


def attach_waits_for_size() -> None:
    """Patch streaming's shared memory (idempotent) so that attaching to a segment another process has created but
    not yet sized waits for the size instead of failing (see the module docstring)."""
    from streaming.base.shared import memory

    builtin = memory.BuiltinSharedMemory
    if getattr(builtin, "waits_for_size", False):
        return

    class AttachWhenSized(builtin):
        waits_for_size = True

        def __init__(self, name=None, create=False, size=0):
            deadline = time.monotonic() + ATTACH_WAIT_S
            while True:
                try:
                    super().__init__(name, create, size)
                    return
                except ValueError as err:  # raised by mmap after shm_open: the fd is open, nothing was unlinked
                    fd = getattr(self, "_fd", -1)
                    if fd >= 0:
                        os.close(fd)
                        self._fd = -1
                    if create or "empty file" not in str(err) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)

    memory.BuiltinSharedMemory = AttachWhenSized


@contextlib.contextmanager
def registering_prefix() -> Iterator[None]:
    """Wrap the construction of a StreamingDataset on every rank of a job (collective when torch.distributed is
    initialised): the local leaders hold the host lock, and clean stale leftovers, until every rank has its prefix."""
    import torch.distributed as dist

    attach_waits_for_size()
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    collective = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    with host_lock() if leader else contextlib.nullcontext():
        if leader:
            clean_stale()
        if collective:
            dist.barrier()  # every node's leader holds its host's lock: no other job is registering there
        yield
        if collective:
            dist.barrier()  # every rank has registered or attached: the next job may scan
