"""Kernel tests run Triton through its CPU interpreter; the variable must be set before triton is imported.

On the GPU machine, `M2DIST_GPU_TESTS=1 python -m pytest tests/kernels -m gpu` compiles the kernels instead.
"""
import os

if os.environ.get("M2DIST_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
