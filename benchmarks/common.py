"""Shared pieces of the GPU benchmarks: timing, ceilings, and routing the project's layers to the kernels.

Timing follows ``shared/bench/bench_ref.py`` (the anchor numbers): CUDA events around each call, median of
``reps`` after ``warm`` warm-ups, so that numbers from the two scripts compare side by side.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RESULTS = os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "results")


def timed(fn, warm: int = 3, reps: int = 10) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after ``warm`` warm-ups (CUDA events)."""
    for _ in range(warm):
        fn()
    if not torch.cuda.is_available():  # CPU smoke runs of the scripts
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return statistics.median(ts)


def ceilings() -> dict:
    """The two ceilings, measured in this run: a dense bf16 GEMM and a device-to-device copy (read + write)."""
    if not torch.cuda.is_available():
        return dict(dense_gemm_8192_bf16_tflops=1.0, d2d_copy_2GiB_GBps=1)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: a @ b, reps=20)
    gemm = 2 * n**3 / t / 1e12
    del a, b
    src = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), reps=20)
    copy = 2 * src.numel() * 2 / t / 1e9
    return dict(dense_gemm_8192_bf16_tflops=round(gemm, 1), d2d_copy_2GiB_GBps=round(copy))


PATHS = {  # which of the project's code paths a benchmark row runs (env read by m2dist.kernels.convert when accelerate runs)
    "fused": {"M2DIST_KERNELS": "1", "M2DIST_FUSED": "1"},  # fused mixer core + GLU, block-diagonal kernel
    "kernels": {"M2DIST_KERNELS": "1", "M2DIST_FUSED": "0"},  # per-op kernels only: long conv, block-diagonal
    "torch": {"M2DIST_KERNELS": "0"},  # the PyTorch reference path
}


class kernels:
    """Context manager: ``with kernels("torch"): ...`` runs the reference PyTorch paths (see ``PATHS``); a bool
    means "fused" (True) or "torch" (False)."""

    def __init__(self, path):
        self.env = PATHS[{True: "fused", False: "torch"}.get(path, path)]

    def __enter__(self):
        self.prev = {k: os.environ.get(k) for k in ("M2DIST_KERNELS", "M2DIST_FUSED")}
        os.environ.pop("M2DIST_FUSED", None)
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.prev.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def env_info() -> dict:
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return dict(torch=torch.__version__, triton=triton.__version__, device=device,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def save(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}", flush=True)
    return path


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row
