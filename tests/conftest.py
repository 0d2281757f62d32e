"""Suite-wide set-up: CPU-only distributed defaults and a clean slate for streaming's shared memory."""

from __future__ import annotations

import glob
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


def _clean_streaming_leftovers() -> None:
    # streaming leaks these after kill -9 and never removes its /tmp filelocks (stack-facts §5);
    # a stale prefix can make a later StreamingDataset refuse its local directory.
    for path in glob.glob("/dev/shm/[0-9][0-9][0-9][0-9][0-9][0-9]_*") + glob.glob(
        "/tmp/[0-9][0-9][0-9][0-9][0-9][0-9]_*_filelock"
    ):
        try:
            os.remove(path)
        except OSError:
            pass


def pytest_sessionstart(session) -> None:
    # Only where this suite is alone on the machine (CI): on a shared dev box the segments may be live.
    if os.environ.get("CI"):
        _clean_streaming_leftovers()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
