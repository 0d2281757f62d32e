"""Suite-wide set-up: CPU-only distributed defaults and a clean slate for streaming's shared memory."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "train"))
# The session's token in every child's environment, and the end-of-session check that none of them is left.
from leftover_check import mark_session, pytest_sessionfinish  # noqa: E402,F401

mark_session()

# 2 cores, several ranks: one thread each. DeepSpeed must not probe for accelerators or JIT-build its shm op.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton fixes interpreter mode when it is first imported, and DeepSpeed imports it: set the mode before any test
# module loads, so the kernel tests run through the CPU interpreter whatever ran first. On the GPU machine,
# M2DIST_GPU_TESTS=1 compiles them instead.
if os.environ.get("M2DIST_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _raise_open_file_limit(want: int = 1 << 16) -> None:
    """Each live StreamingDataset holds ~6 descriptors of /dev/shm segments until it is collected, and a reader
    test builds dozens (3,650 open at once in tests/data/test_readers.py alone); one clean-clone run of the whole
    suite hit the 20,000 limit (EMFILE) in later tests. Raise it where allowed (root, as the Slurm tests need)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(soft, want), max(hard, want)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue


_raise_open_file_limit()


@pytest.fixture(autouse=True)
def _collect_garbage():
    """Readers left in reference cycles by a test are collected before the next, releasing their descriptors."""
    yield
    import gc

    gc.collect()


def pytest_sessionstart(session) -> None:
    # Streaming's leftovers of killed jobs (its /dev/shm segments and /tmp filelocks, stack-facts §5): only those of
    # dead jobs, so this is safe on a shared dev box too (m2dist/data/shm.py; the trainer and prep do the same).
    from m2dist.data.shm import clean_stale, host_lock

    with host_lock():
        clean_stale()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
