"""Every Triton kernel compiles for sm_90 (H100/H200) with Triton's own compiler and ptxas, on this CPU-only host:
the interpreter runs the CPU tests with Python semantics and would not notice a construct the GPU compiler
rejects. A subprocess, because ``TRITON_INTERPRET`` (set for the whole test session) decides at import time what
``triton.jit`` returns."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, str(REPO / "tests/kernels/sm90_compile.py")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "compiled 27 kernel variants for sm_90" in proc.stdout, proc.stdout[-2000:]
