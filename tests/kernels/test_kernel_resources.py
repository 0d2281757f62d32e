"""Every Triton kernel variant the launchers use compiles for sm_90 (H100/H200) with Triton's compiler and ptxas,
on this CPU-only host (``benchmarks/kernel_resources.py``): the interpreter runs the CPU tests with Python semantics
and would not notice a construct the GPU compiler rejects. A subprocess, because ``TRITON_INTERPRET`` (set for the
whole test session) decides at import time what ``triton.jit`` returns."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/kernel_resources.py")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = json.loads((tmp_path / "kernel_resources.json").read_text())["rows"]
    kernels = {r["kernel"].split()[0] for r in rows}
    assert {"mixer_core._fwd_pre", "mixer_core._spectral_bwd", "glu._glu_bwd",
            "block_diagonal._batched_matmul_kernel"} <= kernels
    assert all(r["registers"] and r["cubin_bytes"] > 0 for r in rows)
