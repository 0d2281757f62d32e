"""Helpers of the Slurm tests: submit the way users do, poll job state, find a job's processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from m2dist.jobs.status import TERMINAL_STATES, job_info

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "scripts" / "slurm_cluster"
SMOKE_CONFIG = REPO / "configs" / "smoke" / "m2-gpt-tiny.yaml"
PYTHON = sys.executable


def run_overrides(run_dir: Path) -> list[str]:
    return [f"trainer.run_dir={run_dir}", f"checkpoint.dir={run_dir / 'checkpoints'}"]


def sbatch(args: list[str], env: dict | None = None) -> str:
    """Plain use, as in the README: `sbatch --nodes=N slurm/train.sbatch CONFIG overrides`; returns the job id."""
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def m2dist(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "m2dist", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=timeout)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def state(job_id: str) -> str:
    info = job_info(job_id)
    return info["JobState"] if info else "UNKNOWN"


def wait_done(job_id: str, timeout: float, run_dir: Path | None = None) -> str:
    """Poll `scontrol show job` (sbatch --wait polls at 2 s, then 10 s) until the job is in a terminal state."""
    try:
        return wait_for(lambda: (s := state(job_id)) in TERMINAL_STATES and s, timeout, f"job {job_id} to finish")
    except AssertionError:
        raise AssertionError(f"job {job_id} still {state(job_id)} after {timeout:.0f}s\n{job_logs(run_dir)}") from None


def job_logs(run_dir: Path | None) -> str:
    """The batch and node logs of every attempt, for assertion messages."""
    if run_dir is None or not (run_dir / "logs").is_dir():
        return ""
    parts = []
    for log in sorted((run_dir / "logs").rglob("*.log")):
        parts.append(f"--- {log.relative_to(run_dir)}\n{log.read_text()[-4000:]}")
    return "\n".join(parts)


def processes_of_job(job_id: str) -> list[tuple[int, dict, str]]:
    """(pid, environment, command line) of the live processes that belong to Slurm job ``job_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if env.get("SLURM_JOB_ID") == str(job_id):
            found.append((int(entry.name), env, cmdline))
    return found


def cluster_env() -> dict:
    return {**os.environ, "M2DIST_SLURM_BASE": os.environ.get("M2DIST_SLURM_BASE", "/tmp/m2dist-slurm")}


def take_node_down(node: str) -> list[int]:
    """A node failure: SIGKILL the node's slurmd and every process in its network namespace (slurmstepd, torchrun,
    the trainers), as a power loss would. Returns the pids killed."""
    import signal

    base = cluster_env()["M2DIST_SLURM_BASE"]
    ns = "m2sn" + node.removeprefix("node")  # scripts/slurm_cluster/common.sh: netns_name
    pids = {int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                           check=True).stdout.split()}
    pidfile = Path(base) / "run" / f"slurmd-{node}.pid"
    if pidfile.exists():
        pids.add(int(pidfile.read_text().strip()))
    for pid in sorted(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(pids)


def bring_nodes_up() -> None:
    """scripts/slurm_cluster/up.sh is idempotent: it starts only the slurmd that are not running."""
    proc = subprocess.run(["bash", str(CLUSTER / "up.sh")], env=cluster_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
