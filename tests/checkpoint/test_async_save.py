"""Asynchronous save (``checkpoint.async_save: true``, issue 15): the state is copied to host memory, written by a
background thread while training goes on, and committed only when every rank's files are complete; a kill -9
during the background write leaves the previous checkpoint as the one resumed, and the resumed run is bit-identical
to an uninterrupted one."""

from __future__ import annotations

import json

import pytest

import m2dist_run as mr

pytestmark = pytest.mark.slow


def test_kill9_during_background_write_resumes_from_the_previous_checkpoint(run, configs, tmp_path):
    ref = run("gpt_dp2_z0")  # the same run with synchronous saves at 10 and 20
    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    overrides = [f"trainer.run_dir={run_dir}", f"checkpoint.dir={ckpt}", "checkpoint.async_save=true",
                 "checkpoint.every=4"]
    # Rank 1's background writer of the step-8 save stops before writing anything; rank 0's writes all of its files.
    job = mr.start_train(configs["gpt"], overrides, 2, tmp_path, log=tmp_path / "first.log",
                         extra_env={"M2DIST_TEST_ASYNC_SAVE_STALL": "8:1"})
    tmp8 = ckpt / ".tmp_step_8"
    try:
        mr.wait_for(lambda: (tmp8 / "STALLED_rank_1").exists(), 240, job, "the stalled step-8 save")
        # Training goes on while the save is in flight (the next save, at 12, would wait for it).
        mr.wait_for(lambda: max(mr.losses(run_dir), default=0) >= 10, 240, job, "step 10")
        # Rank 0 finished its files, but nothing is committed while rank 1's are missing.
        mr.wait_for(lambda: (tmp8 / "ranks" / "rank_00000.pt").exists(), 60, job, "rank 0's files")
        assert (tmp8 / "mp_rank_00_model_states.pt").exists() and (tmp8 / "trainer_state.json").exists()
        assert not (tmp8 / "ranks" / "rank_00001.pt").exists() and not (tmp8 / "manifest.json").exists()
        assert not (ckpt / "step_8").exists() and (ckpt / "latest").read_text().strip() == "step_4"
    finally:
        mr.kill_job(job)  # every process of the job: torchrun and both workers (each in its own session)
    assert (ckpt / "step_4" / "manifest.json").exists()  # written in the background, committed

    proc = mr.run_train(configs["gpt"], overrides, 2, tmp_path)
    mr.check(proc)
    assert "removing uncommitted checkpoint" in proc.stderr and ".tmp_step_8" in proc.stderr
    assert "step_4 at step 4" in proc.stderr
    assert "being written in the background" in proc.stderr
    resumed, full = mr.losses(run_dir), mr.losses(ref)
    assert sorted(resumed) == list(range(1, 21))
    for s in range(1, 21):
        assert resumed[s] == full[s], f"step {s}: {resumed[s]!r} != {full[s]!r}"
    assert mr.sample_ids(run_dir) == mr.sample_ids(ref)
    # The resumed run's background saves were all committed (12, 16; 20 is the final, blocking one), keep_last=3.
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step_")) == ["step_12", "step_16", "step_20"]
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".tmp")]
    for name in ("step_12", "step_16", "step_20"):
        files = json.loads((ckpt / name / "manifest.json").read_text())["files"]
        assert {"ranks/rank_00000.pt", "ranks/rank_00001.pt", "mp_rank_00_model_states.pt"} <= set(files)
    assert (ckpt / "latest").read_text().strip() == "step_20"
