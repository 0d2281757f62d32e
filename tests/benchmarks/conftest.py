"""The prepared token data of the benchmark scripts' CPU runs, made once per session (through scaling_bench.py's
``CPU_TEST=1 PREP_ONLY=1``, i.e. train_bench's real prep commands at the CPU sizes) and shared by the train_bench
and scaling_bench tests: both read the same tiny corpus, tokenizer and L=128 MDS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-data")
    env = dict(os.environ, CPU_TEST="1", PREP_ONLY="1", DATA=str(root / "data"), OUT=str(root / "out"),
               DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TMPDIR=str(root))
    for key in ("ROWS", "BENCH_CORPUS_CHARS", "BENCH_TOKENIZER_PIECES"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "benchmarks/scaling_bench.py"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "data"
