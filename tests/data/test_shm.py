"""m2dist/data/shm.py: streaming's attach to a segment that its creator has opened but not yet sized waits for the
size (the shm_open -> ftruncate window that killed a rank in the suite on a loaded host)."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

_posixshmem = pytest.importorskip("_posixshmem")


def _half_created(name: str):
    """What a creator between ``shm_open`` and ``ftruncate`` leaves: a segment of 0 bytes, and its fd."""
    return _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)


@pytest.fixture
def segment_name():
    name = f"m2dist_test_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        pass


def test_attach_waits_until_the_creator_sized_the_segment(segment_name):
    from streaming.base.shared.memory import SharedMemory  # noqa: F401  (the module the patch replaces a name in)

    from m2dist.data.shm import attach_waits_for_size

    attach_waits_for_size()
    from streaming.base.shared import memory

    fd = _half_created(segment_name)
    sized = threading.Timer(0.3, lambda: os.ftruncate(fd, 64))
    sized.start()
    t0 = time.monotonic()
    try:
        shm = memory.SharedMemory(name=segment_name, size=64)  # create=None: streaming's create-or-attach
        assert shm.shm.size == 64 and time.monotonic() - t0 >= 0.25
        assert shm.opened_shms and not shm.created_shms  # it attached; the creator owns the segment
        shm.shm.close()
    finally:
        sized.join()
        os.close(fd)


def test_a_segment_never_sized_still_fails_after_the_wait(segment_name, monkeypatch):
    from m2dist.data import shm as m2shm

    m2shm.attach_waits_for_size()
    monkeypatch.setattr(m2shm, "ATTACH_WAIT_S", 0.2)
    from streaming.base.shared import memory

    fd = _half_created(segment_name)
    try:
        with pytest.raises(ValueError, match="empty file"):
            memory.SharedMemory(name=segment_name, size=64)
    finally:
        os.close(fd)
