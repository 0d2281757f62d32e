"""Several m2dist jobs on one host at the same time (issue 14.3): mosaicml-streaming's shared-memory prefixes are
taken one job at a time, and a dead job's leftovers are cleaned without touching a live job's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
import m2dist_run as mr  # noqa: E402

from m2dist.data.shm import clean_stale  # noqa: E402

JOBS, LOADERS = 3, 10


@pytest.mark.slow
def test_concurrent_jobs_each_get_their_own_prefixes(prepared, tmp_path):
    """Without the host lock, 2-3 such jobs interleave their prefix scans: a rank fails with "shared memory
    registered does not match local leader", or two jobs share a prefix and one unlinks the other's barrier
    (its ranks then hang)."""
    script = Path(__file__).with_name("many_loaders.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(mr.REPO)}
    jobs = []
    for j in range(JOBS):
        out = tmp_path / f"job{j}"
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
               "--rdzv-endpoint=localhost:0", str(script), prepared["lm"], prepared["tokenizer"], str(LOADERS),
               str(out)]
        log = open(out / "log.txt", "w")
        jobs.append((out, log, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)))
    deadline = time.time() + 240
    try:
        for out, log, job in jobs:
            try:
                job.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for out, log, job in jobs:
            if job.poll() is None:
                mr.kill_job(job)
            log.close()
    for out, _, job in jobs:
        text = (out / "log.txt").read_text()
        # The root cause is the first rank's error, usually far above the launcher's summary at the end.
        errors = "\n".join([line for line in text.splitlines() if "Error" in line][:12])
        assert job.returncode == 0, f"{out.name} exited {job.returncode}:\n{errors}\n...\n{text[-2000:]}"
        assert sorted(p.name for p in out.glob("*.ok")) == ["rank0.ok", "rank1.ok"]


def _segment(name: str, age_s: float) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name, create=True, size=64)
    try:  # left to clean_stale, not to the resource tracker of this process
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:
        pass
    old = time.time() - age_s
    os.utime(f"/dev/shm/{name}", (old, old))
    return shm


def test_clean_stale_removes_only_dead_jobs_leftovers(tmp_path):
    base = 900000 + os.getpid() % 90000  # prefixes no real job reaches
    dead, live, young = (f"{base + i:06}" for i in range(3))
    made = []
    try:
        # A dead job's prefix: segments nobody maps, and its file locks, a minute old.
        shm = _segment(f"{dead}_locals", 120)
        shm.close()
        made.append(shm)
        locks = [tmp_path / f"{dead}_{kind}_filelock" for kind in ("barrier", "cache")]
        for lock in locks:
            lock.write_text("")
            os.utime(lock, (time.time() - 120, time.time() - 120))
        # A live job's prefix: one segment mapped (here, by this process), another not, both old.
        mapped = _segment(f"{live}_locals", 120)
        unmapped = _segment(f"{live}_barrier", 120)
        unmapped.close()
        made += [mapped, unmapped]
        # A prefix just created: not mapped yet, but young.
        fresh = _segment(f"{young}_locals", 0)
        fresh.close()
        made.append(fresh)

        removed = clean_stale(str(tmp_path))
        assert sorted(removed) == sorted([f"/dev/shm/{dead}_locals", *map(str, locks)])
        for name in (f"{live}_locals", f"{live}_barrier", f"{young}_locals"):
            assert Path("/dev/shm", name).exists(), name
    finally:
        for shm in made:
            shm.close()
            try:  # not shm.unlink(): that would unregister from the resource tracker a second time
                os.unlink(f"/dev/shm/{shm.name}")
            except FileNotFoundError:
                pass
