"""The project's sbatch script on a real 2-node Slurm cluster (network namespaces, gloo across them).

Jobs get whole nodes (OverSubscribe=EXCLUSIVE), so they run one after another; fixtures submit some early so
that the queue never idles while a test inspects results.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess

import pytest

from m2dist.jobs import records
from m2dist.jobs.status import job_info
from tests.slurm.slurm_helpers import (
    SMOKE_CONFIG, bring_nodes_up, m2dist, job_logs, processes_of_job, run_overrides, sbatch, state,
    take_node_down, wait_done, wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 30
CHECKPOINT_EVERY = 10
JOB_TIMEOUT_S = 600  # includes waiting in the queue behind an earlier test's jobs
# Killing one rank must end the whole job within this (torchrun notices in 1 s, srun --kill-on-bad-exit ends the
# other node, Slurm's KillWait is 5 s on the test cluster): a hang would hold the nodes for the full time limit.
FAIL_TIMEOUT_S = 60
# A node that stops answering is DOWN after SlurmdTimeout (15 s on the test cluster, up.sh) plus up to one ping
# interval; Slurm then ends the job (NODE_FAIL) and, as it is --requeue, requeues it. Measured: 31 s.
NODE_FAIL_TIMEOUT_S = 90


def _final(run_dir) -> dict:
    metrics = records.train_metrics(run_dir)
    assert metrics, f"no metrics in {run_dir}\n{job_logs(run_dir)}"
    return metrics[-1]


def _outcomes(run_dir) -> list[str]:
    return [a["outcome"] for a in records.attempts(run_dir) if a["event"] == "end"]


@pytest.fixture(scope="module")
def reference_run(slurm_cluster, train_overrides, tmp_path_factory):
    """An uninterrupted 2-node run, submitted the plain way: `sbatch --nodes=2 slurm/train.sbatch CONFIG ...`.
    Submitted without waiting: the preemption test's job queues behind it."""
    run_dir = tmp_path_factory.mktemp("slurm-runs") / "reference"
    job = sbatch(["--nodes=2", "slurm/train.sbatch", str(SMOKE_CONFIG), *train_overrides, *run_overrides(run_dir),
                  f"trainer.max_steps={STEPS}", f"checkpoint.every={CHECKPOINT_EVERY}"])
    return job, run_dir


@pytest.fixture(scope="module")
def sweep_run(slurm_cluster, train_overrides, tmp_path_factory):
    """The two-job sweep, submitted before the kill test's jobs; the sweep test reports on it."""
    out = tmp_path_factory.mktemp("slurm-sweep") / "sweep"
    submitted = m2dist("sweep", "--out-dir", str(out), "sweeps/smoke-nodes.yaml", *train_overrides)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    return out


def test_usr1_saves_requeues_and_resumes_to_the_same_loss(reference_run, train_overrides, tmp_path):
    reference_job, reference_dir = reference_run
    run_dir = tmp_path / "preempted"
    submit = m2dist("slurm", "submit", "--config", str(SMOKE_CONFIG), "--nodes", "2", "--time", "00:20:00",
                    *train_overrides, *run_overrides(run_dir), f"trainer.max_steps={STEPS}",
                    f"checkpoint.every={CHECKPOINT_EVERY}")
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job = records.job_ids(run_dir)[-1]
    assert (run_dir / "slurm" / "job.sbatch").is_file()

    wait_for(lambda: len(records.train_metrics(run_dir)) >= 2, JOB_TIMEOUT_S, "two logged steps", interval=0.05)
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
    # The job requeues itself: pending again, same id, Restarts=1 (the test cluster holds it for cred_expire=10 s).
    wait_for(lambda: (job_info(job) or {}).get("Restarts") == "1", 120, "the job to requeue itself")
    assert wait_done(job, JOB_TIMEOUT_S, run_dir) == "COMPLETED", job_logs(run_dir)

    assert _outcomes(run_dir) == ["requeued", "completed"], records.attempts(run_dir)
    assert not (run_dir / "PREEMPTED").exists()
    second = (run_dir / "logs" / f"{job}.1")
    resumed = [line for p in second.glob("node*.log") for line in p.read_text().splitlines() if "resumed from" in line]
    assert resumed, job_logs(run_dir)
    saved_at = int(resumed[0].split("at step")[1].split()[0])
    assert 2 <= saved_at < STEPS, resumed  # the preemption checkpoint, not a scheduled one or the end
    assert wait_done(reference_job, JOB_TIMEOUT_S, reference_dir) == "COMPLETED", job_logs(reference_dir)
    final, reference = _final(run_dir), _final(reference_dir)
    assert final["step"] == reference["step"] == STEPS
    assert final["loss"] == pytest.approx(reference["loss"], rel=1e-6, abs=1e-7)


def test_two_node_cpu_job_completes_with_checkpoints_and_metrics(reference_run):
    job, run_dir = reference_run
    assert wait_done(job, JOB_TIMEOUT_S, run_dir) == "COMPLETED", job_logs(run_dir)
    assert _final(run_dir)["step"] == STEPS
    steps = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))
    assert STEPS in steps and len(steps) >= 2, steps  # scheduled saves, the final one among them
    (start,) = [a for a in records.attempts(run_dir) if a["event"] == "start"]
    assert (start["nodes"], start["world_size"]) == (2, 2)
    # One log per node: both namespaces ran a torchrun, and they met in one rendezvous on node1.
    logs = run_dir / "logs" / f"{job}.0"
    assert {p.name for p in logs.glob("node*.log")} == {"node1.log", "node2.log"}
    assert "rendezvous node1:" in (logs / "node2.log").read_text()
    status = m2dist("slurm", "status", str(run_dir))
    assert status.returncode == 0, status.stderr
    assert f"job          {job} COMPLETED" in status.stdout and f"step {STEPS}" in status.stdout, status.stdout


def test_killed_rank_fails_the_job_and_a_resubmission_resumes(slurm_cluster, train_overrides, tmp_path, sweep_run):
    run_dir = tmp_path / "killed"
    args = ["--nodes=2", "slurm/train.sbatch", str(SMOKE_CONFIG), *train_overrides, *run_overrides(run_dir),
            f"trainer.max_steps={STEPS}", "checkpoint.every=4"]
    # The trainer's test hook: after step 4 and its checkpoint every rank idles (and rank 0 writes PAUSED), so the
    # kill lands at a known step, and no collective is in flight that would end the other node by itself.
    job = sbatch(args, env={**os.environ, "M2DIST_TEST_PAUSE_AFTER_STEP": "4"})
    wait_for(lambda: (run_dir / "PAUSED").exists() or state(job) in ("FAILED", "COMPLETED"), JOB_TIMEOUT_S,
             "the paused trainer")
    assert (run_dir / "PAUSED").exists(), job_logs(run_dir)
    trainers = [pid for pid, env, cmd in processes_of_job(job)
                if env.get("SLURMD_NODENAME") == "node2" and "LOCAL_RANK" in env and " train " in cmd]
    assert len(trainers) == 1, processes_of_job(job)
    os.kill(trainers[0], signal.SIGKILL)
    final_state = wait_done(job, FAIL_TIMEOUT_S, run_dir)
    assert final_state == "FAILED", job_logs(run_dir)
    wait_for(lambda: not processes_of_job(job), 30, f"no process of job {job} left")
    assert _outcomes(run_dir) == ["failed"]

    (run_dir / "PAUSED").unlink()
    again = sbatch(args)
    assert wait_done(again, JOB_TIMEOUT_S, run_dir) == "COMPLETED", job_logs(run_dir)
    resumed = [line for p in (run_dir / "logs" / f"{again}.0").glob("node*.log") for line in p.read_text().splitlines()
               if "resumed from" in line]
    assert resumed and "at step 4" in resumed[0], job_logs(run_dir)
    assert _final(run_dir)["step"] == STEPS
    assert _outcomes(run_dir) == ["failed", "completed"]


def test_two_job_sweep_runs_and_is_reported(sweep_run):
    out = sweep_run
    manifest = json.loads((out / "sweep.json").read_text())
    jobs = {p["label"]: p["job_id"] for p in manifest["points"]}
    assert set(jobs) == {"n1", "n2"}, jobs
    for label, job in jobs.items():
        assert wait_done(job, JOB_TIMEOUT_S, out / label) == "COMPLETED", job_logs(out / label)

    report = m2dist("sweep", "report", str(out))
    assert report.returncode == 0, report.stdout + report.stderr
    with open(out / "report.csv") as f:
        rows = {int(r["gpus"]): r for r in csv.DictReader(f)}
    assert set(rows) == {1, 2}, rows
    assert all(float(r["tokens_per_s"]) > 0 for r in rows.values())
    assert float(rows[1]["scaling_efficiency"]) == pytest.approx(1.0)
    assert 0 < float(rows[2]["scaling_efficiency"])
    assert "| run | model |" in (out / "report.md").read_text()
    for png in ("scaling_vs_gpus.png", "scaling_vs_seq_len.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def _resumed_lines(run_dir, job, attempt) -> list[str]:
    logs = run_dir / "logs" / f"{job}.{attempt}"
    return [line for p in logs.glob("node*.log") for line in p.read_text().splitlines() if "resumed from" in line]


def test_node_failure_requeues_and_resumes_from_the_last_checkpoint(slurm_cluster, train_overrides, tmp_path):
    """A real node failure: node2's slurmd and every process in its namespace are SIGKILLed mid-training. Slurm
    marks the node DOWN, ends the job and requeues it itself (--requeue); it waits for two nodes, starts when node2's
    slurmd is back (an admin's repair; here up.sh) and resumes from the newest complete checkpoint.
    The job is context-parallel across the two nodes (CP2, one rank each): the launcher's rendezvous and CP compose."""
    run_dir = tmp_path / "node-failure"
    job = sbatch(["--nodes=2", "slurm/train.sbatch", str(SMOKE_CONFIG), *train_overrides, *run_overrides(run_dir),
                  "trainer.max_steps=100000", "checkpoint.every=4", "parallel.context=2"])
    try:
        wait_for(lambda: (m := records.train_metrics(run_dir)) and m[-1]["step"] >= 6, JOB_TIMEOUT_S,
                 "step 6", interval=0.05)
        killed = take_node_down("node2")
        assert len(killed) >= 3, killed  # slurmd, slurmstepd, torchrun, the trainer
        t0 = __import__("time").monotonic()
        wait_for(lambda: (job_info(job) or {}).get("Restarts") == "1", NODE_FAIL_TIMEOUT_S,
                 "Slurm to requeue the job after the node failure")
        took = __import__("time").monotonic() - t0
        # Restarts counts the requeue while the killed attempt may still be COMPLETING (its epilog, the lost
        # node's steps): the job then waits PENDING for two nodes, node2 being down.
        wait_for(lambda: state(job) == "PENDING", 60, "the requeued job to wait pending")
        # Nothing of the first attempt survives on either node.
        wait_for(lambda: not processes_of_job(job), 30, f"no process of job {job} left")
        complete = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")
                          if (p / "manifest.json").exists())
        assert complete, job_logs(run_dir)
    finally:
        bring_nodes_up()
    wait_for(lambda: _resumed_lines(run_dir, job, 1), JOB_TIMEOUT_S, "the requeued attempt to resume")
    resumed = _resumed_lines(run_dir, job, 1)[0]
    assert f"step_{complete[-1]} at step {complete[-1]}" in resumed, (resumed, complete)
    first = "".join(p.read_text() for p in (run_dir / "logs" / f"{job}.0").glob("node*.log"))  # rank 0's node
    assert "world 2 = tensor 1 x context 2 x data 1" in first, first[-3000:]
    wait_for(lambda: records.train_metrics(run_dir)[-1]["step"] > complete[-1] + 2, JOB_TIMEOUT_S,
             "training to continue")
    subprocess.run(["scancel", job], check=True, timeout=30)
    wait_done(job, 60, run_dir)
    wait_for(lambda: not processes_of_job(job), 30, f"no process of job {job} left")
    print(f"node failure -> job requeued by Slurm after {took:.0f} s (bound {NODE_FAIL_TIMEOUT_S} s)")


def test_time_limit_signal_saves_requeues_and_resumes(slurm_cluster, train_overrides, tmp_path):
    """`--time=1 --signal=USR1@40`: Slurm signals the job about 40 s before the 1-minute limit (its timer is coarse:
    the signal can come while the trainers are still starting, which torchrun_node.sh covers by repeating it until
    the checkpoint is committed); the trainers save, the job requeues itself and the next attempt resumes from that
    save, before the time limit (a job ended by its time limit is not requeued)."""
    run_dir = tmp_path / "time-limit"
    job = sbatch(["--nodes=2", "--time=1", "--signal=USR1@40", "slurm/train.sbatch", str(SMOKE_CONFIG),
                  *train_overrides, *run_overrides(run_dir), "trainer.max_steps=100000", "checkpoint.every=0"])
    try:
        wait_for(lambda: (job_info(job) or {}).get("Restarts") == "1", JOB_TIMEOUT_S, "the job to requeue itself")
        marker_step = json.loads((run_dir / "PREEMPTED").read_text())["step"] if (run_dir / "PREEMPTED").exists() \
            else None
        assert _outcomes(run_dir) == ["requeued"], (records.attempts(run_dir), job_logs(run_dir))
        saved = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))
        assert len(saved) == 1, saved  # checkpoint.every=0: only the signal's save
        wait_for(lambda: _resumed_lines(run_dir, job, 1), JOB_TIMEOUT_S, "the requeued attempt to resume")
        assert f"at step {saved[0]}" in _resumed_lines(run_dir, job, 1)[0]
        assert marker_step in (None, saved[0])  # (the next attempt removes the marker once it has read it)
        log0 = "\n".join(p.read_text() for p in (run_dir / "logs" / f"{job}.0").glob("node*.log"))
        assert "preemption signal 10" in log0 and "DUE TO TIME LIMIT" not in log0, log0[-3000:]
        wait_for(lambda: records.train_metrics(run_dir)[-1]["step"] > saved[0], JOB_TIMEOUT_S, "training to go on")
    finally:
        subprocess.run(["scancel", job], timeout=30)
    wait_done(job, 60, run_dir)
    wait_for(lambda: not processes_of_job(job), 30, f"no process of job {job} left")
