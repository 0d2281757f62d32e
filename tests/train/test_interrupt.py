"""Ctrl-C keeps the work: the first one saves at the current step and exits 130; a second one aborts at once."""

from __future__ import annotations

import os
import signal

import pytest

import m2dist_run as mr

pytestmark = pytest.mark.slow


def _logged_steps(run_dir) -> list[int]:
    return [m["step"] for m in mr.metrics(run_dir) if "loss" in m]


def test_ctrl_c_under_torchrun_saves_the_current_step(configs, tmp_path):
    """SIGINT to the launcher's process group, as a terminal sends it; torchrun forwards it to its workers."""
    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    job = mr.start_train(configs["gpt"], [f"trainer.run_dir={run_dir}", f"checkpoint.dir={ckpt}",
                                          "trainer.max_steps=100000", "checkpoint.every=0"],
                         2, tmp_path, log=tmp_path / "job.log")
    try:
        mr.wait_for(lambda: any(s >= 3 for s in _logged_steps(run_dir)), 240, job, "step 3")
        os.killpg(job.pid, signal.SIGINT)
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            mr.kill_job(job)
    log = (tmp_path / "job.log").read_text()
    assert "Ctrl-C again aborts at once" in log and "interrupted (Ctrl-C during step" in log, log[-3000:]
    last = max(_logged_steps(run_dir))
    assert (ckpt / "latest").read_text().strip() == f"step_{last}", log[-3000:]
    assert (ckpt / f"step_{last}" / "manifest.json").exists()
    assert not (run_dir / "PREEMPTED").exists()  # a user's stop is not a requeue


def test_ctrl_c_alone_exits_130_and_twice_aborts_at_once(configs, tmp_path):
    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    overrides = [f"trainer.run_dir={run_dir}", f"checkpoint.dir={ckpt}", "trainer.max_steps=100000",
                 "checkpoint.every=0"]
    # One process; a single Ctrl-C: saved at the step it was in, exit 130.
    job = mr.start_train(configs["gpt"], overrides, 1, tmp_path, log=tmp_path / "once.log")
    try:
        mr.wait_for(lambda: any(s >= 2 for s in _logged_steps(run_dir)), 240, job, "step 2")
        os.killpg(job.pid, signal.SIGINT)
        assert job.wait(timeout=120) == 130
    finally:
        if job.poll() is None:
            mr.kill_job(job)
    last = max(_logged_steps(run_dir))
    assert (ckpt / "latest").read_text().strip() == f"step_{last}"

    # Stuck after step 2 (the test pause: no end-of-step check will come), Ctrl-C twice: the first is only noted,
    # the second ends the process by SIGINT's default action, at once.
    run_dir2 = tmp_path / "run2"
    job = mr.start_train(configs["gpt"], [f"trainer.run_dir={run_dir2}", f"checkpoint.dir={tmp_path / 'ckpt2'}",
                                          "trainer.max_steps=100000", "checkpoint.every=0"], 1, tmp_path,
                         log=tmp_path / "twice.log", extra_env={mr_pause(): "2"})
    try:
        mr.wait_for(lambda: (run_dir2 / "PAUSED").exists(), 240, job, "the pause after step 2")
        os.killpg(job.pid, signal.SIGINT)
        mr.wait_for(lambda: "Ctrl-C again aborts" in (tmp_path / "twice.log").read_text(), 30, job,
                    "the first Ctrl-C's message")
        os.killpg(job.pid, signal.SIGINT)
        assert job.wait(timeout=10) == -signal.SIGINT
    finally:
        if job.poll() is None:
            mr.kill_job(job)
    assert not (tmp_path / "ckpt2" / "latest").exists()


def mr_pause() -> str:
    from m2dist.train.trainer import PAUSE_ENV

    return PAUSE_ENV
