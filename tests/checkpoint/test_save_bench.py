"""benchmarks/checkpoint_save_bench.py (the sync-vs-async save cost on the GPU) runs end to end on CPU with the tiny
model and writes its JSON: so the lead's H200 run is not its first."""

from __future__ import annotations

import json
import subprocess

import pytest

import m2dist_run as mr

pytestmark = pytest.mark.slow


def test_checkpoint_save_bench_runs_on_cpu(configs, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([mr.PY, "benchmarks/checkpoint_save_bench.py", "--config", configs["gpt"], "--warmup", "1",
                           "--steps", "4", "--save-at", "1", "--out", str(out), "--ckpt-root", str(tmp_path)],
                          cwd=mr.REPO, env=mr.base_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "checkpoint_save_bench.json").read_text())
    modes = {s["mode"]: s for s in report["summary"]}
    assert set(modes) == {"sync", "async"}
    for s in modes.values():
        assert s["save_call_s"] > 0 and s["write_s"] >= 0 and s["median_step_s"] > 0 and s["checkpoint_gib"] > 0
    # The asynchronous save's write finishes after its save call returned; the synchronous one within it.
    assert modes["sync"]["write_s"] == modes["sync"]["save_call_s"]
    assert modes["async"]["write_s"] >= modes["async"]["save_call_s"]
    assert "sync: median step" in proc.stdout and "async: median step" in proc.stdout
    assert not list(tmp_path.glob("m2dist-save-bench-*"))  # its temporary checkpoints are removed
