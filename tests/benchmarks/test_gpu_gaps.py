"""``benchmarks/gpu_gaps.py`` on a hand-made trace: each idle stretch of the GPU is charged to the innermost host
phase open when the work after it was launched, and host syncs are counted where they happen."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from gpu_gaps import gaps_by_phase  # noqa: E402


def _x(name, cat, ts, dur, **args):
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "args": args}


def test_idle_goes_to_the_phase_that_launched_the_next_kernel():
    trace = {"traceEvents": [
        _x("trainer", "user_annotation", 0, 1000), _x("forward", "user_annotation", 0, 300),
        _x("optimizer step", "user_annotation", 400, 500),
        _x("cudaLaunchKernel", "cuda_runtime", 10, 5, correlation=1),
        _x("k1", "kernel", 20, 100, correlation=1),          # busy 20-120
        _x("cudaLaunchKernel", "cuda_runtime", 100, 5, correlation=2),
        _x("k2", "kernel", 110, 50, correlation=2),          # overlaps k1: no gap, busy to 160
        _x("cudaStreamSynchronize", "cuda_runtime", 420, 30),
        _x("cudaStreamWaitEvent", "cuda_runtime", 460, 2),  # orders two streams; the host does not wait
        _x("cudaLaunchKernel", "cuda_runtime", 600, 5, correlation=3),
        _x("k3", "kernel", 610, 40, correlation=3),          # gap 160-610 = 450 us, launched in the step
    ]}
    got = gaps_by_phase(trace)
    assert got["optimizer step"]["idle_ms"] == 0.45 and got["optimizer step"]["gaps"] == 1
    assert got["optimizer step"]["syncs"] == 1 and got["optimizer step"]["sync_ms"] == 0.03
    assert "forward" not in got or got["forward"]["idle_ms"] == 0
    assert got["_total"] == {"gpu_busy_ms": 0.18, "gpu_span_ms": 0.63}
