"""benchmarks/train_bench.py on CPU with the tiny presets, on data its own prep commands made (conftest.py), runs
the trainer path and the bare loop on the same batches, and (fp32 on CPU) the two loss curves agree, so the
benchmark compares the same learning; the JSON and the plot are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_train_bench_trainer_and_bare_loop_learn_the_same(tmp_path, bench_data):
    env = dict(os.environ, DATA=str(bench_data), OUT=str(tmp_path / "out"), ROWS="m2-gpt-tiny@128",
               TOKENS="512", STEPS="4", WARMUP="2", BENCH_CORPUS_CHARS="400000", BENCH_TOKENIZER_PIECES="512",
               DS_ACCELERATOR="cpu", VARIANTS="z1:deepspeed.zero_stage=1;z0:deepspeed.zero_stage=0", PROFILE="1")
    proc = subprocess.run([sys.executable, "benchmarks/train_bench.py"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "train_bench.json").read_text())
    # PROFILE=1: the first row's profile tables and the idle-time summary (gpu_gaps; empty on CPU) for every job.
    for mode in ("trainer:z1", "trainer:z0", "bare"):
        assert f"== profile: m2-gpt-tiny@128 {mode}" in proc.stdout, proc.stdout[-3000:]
    assert proc.stdout.count("idle per step by the host phase issuing the next work") == 3
    assert (tmp_path / "out" / "train_bench.png").stat().st_size > 0
    rows = {(r["preset"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {("m2-gpt-tiny", m) for m in ("trainer:z1", "trainer:z0", "bare")}
    for (preset, mode), r in rows.items():
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["peak_mem_gib"] > 0
        assert len(r["losses"]) == 3  # logged at steps 2, 4, 6 (every WARMUP steps)
        if mode != "bare":
            # fp32, same init and batches: the trainer's curve is the bare loop's (measured: equal to 1e-6).
            assert r["loss_max_rel_diff_vs_bare"] < 1e-4, r
            assert r["tokens_per_step"] == 512
