"""benchmarks/cp_predict.py runs on CPU and its communication column is method (a)'s bytes over every layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cp_predict_prints_every_length_and_cp():
    out = subprocess.run([sys.executable, "benchmarks/cp_predict.py", "--tokens-per-s", "50000"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "K |" in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (f"{k}K", str(cp)) for k in (64, 128, 256, 1024) for cp in (2, 4, 8)]
    from m2dist.parallel.context_volume import context_comm_volume

    # 64K at CP=2: 40 layers of M2-GPT-360M (H=1024, causal, no residual long conv), bf16.
    want = 40 * context_comm_volume("a", 1, 1 << 16, 1024, 2, 2, short_conv_size=3)["total"] / 2**30
    assert abs(float(rows[0][4]) - want) < 0.01
    assert abs(float(rows[0][3]) - (1 << 15) / 50000) < 0.01
