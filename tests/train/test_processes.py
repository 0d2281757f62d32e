"""kill -9 of a job reaches every rank (torchrun runs its workers in sessions of their own), and a test session that
leaves a process behind fails, naming it, and kills it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

import m2dist_run as mr

# Each rank writes its pid and sleeps, as a rank paused by M2DIST_TEST_PAUSE_AFTER_STEP does.
RANK_SCRIPT = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1], f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
while True:
    time.sleep(1)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill_job_kills_every_torchrun_worker(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    cmd = [mr.PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={mr.free_port()}",
           str(script), str(tmp_path)]
    job = subprocess.Popen(cmd, cwd=tmp_path, env=mr.base_env(tmp_path), stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT, start_new_session=True)
    pids = []
    try:
        mr.wait_for(lambda: len(list(tmp_path.glob("rank*.pid"))) == 2, 120, job, "both ranks")
        pids = [int(p.read_text()) for p in sorted(tmp_path.glob("rank*.pid"))]
        # The premise: the workers are not in the launcher's process group.
        assert all(os.getpgid(pid) != job.pid for pid in pids)
        mr.kill_job(job)
        assert job.returncode == -9
        left = [pid for pid in pids if _alive(pid)]
        assert not left, f"kill_job left ranks {left} running"
    finally:
        for pid in pids:  # this test's own ranks, by pid, if the helper missed them
            if _alive(pid):
                psutil.Process(pid).kill()
        if job.poll() is None:
            job.kill()
            job.wait()


def test_a_session_that_leaves_a_process_fails_and_kills_it(tmp_path):
    """A nested pytest session whose test starts a process in a session of its own and leaves it running."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from leftover_check import mark_session, pytest_sessionfinish  # noqa: F401
        mark_session()
    """))
    (tmp_path / "test_leaks.py").write_text(textwrap.dedent(f"""
        import subprocess, sys
        def test_leaks():
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            open({str(tmp_path / "leaked.pid")!r}, "w").write(str(p.pid))
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    leaked = int((tmp_path / "leaked.pid").read_text())
    try:
        assert proc.returncode == 1, proc.stdout[-2000:]
        assert "1 passed" in proc.stdout and "tests left 1 process(es) running" in proc.stdout, proc.stdout[-2000:]
        assert f"pid {leaked}:" in proc.stdout
        psutil.wait_procs([psutil.Process(leaked)], timeout=10) if _alive(leaked) else None
        assert not _alive(leaked)
    finally:
        if _alive(leaked):
            psutil.Process(leaked).kill()
