"""Where the GPU waits: idle time between kernels, attributed to what the host was doing when the work arrived.

A step whose wall time exceeds its GPU time (benchmarks/NOTES.md, attempts 15-19) leaves gaps in the GPU's
timeline. For each gap this takes the launch (``cudaLaunchKernel``, ``cudaGraphLaunch``, a copy) of the first GPU
operation after it, through the profiler's correlation id, and charges the gap to the innermost ``record_function``
range of ``phases`` open on the host at that launch: a gap charged to "forward" means the host was still issuing the
forward when the GPU ran dry; to "optimizer step", that the step's host code ran while the GPU had nothing queued.
Host synchronisations (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaMemcpy`` and event syncs) are
counted per phase too: after one, the GPU has nothing queued, and the next gap is the host's.

    from gpu_gaps import phase_ranges, gaps_by_phase
    with phase_ranges(trainer): ...profile with torch.profiler, export_chrome_trace(path)...
    print(gaps_by_phase(json.load(open(path))))
"""
from __future__ import annotations

import bisect
import contextlib
from collections import defaultdict

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
# cudaStreamWaitEvent is not among them: it orders two GPU streams and returns at once (DeepSpeed's ZeRO calls it
# between its reduction stream and the default one).
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ",
              "cudaMemcpy(")
MIN_GAP_US = 5.0


def gaps_by_phase(trace: dict, min_gap_us: float = MIN_GAP_US) -> dict:
    """{phase: {"idle_ms", "gaps", "sync_ms", "syncs"}} plus "_total" (busy and span of the GPU timeline)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    ranges = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e.get("cat") == "user_annotation"),
                    key=lambda r: r[0])
    starts = [r[0] for r in ranges]

    def phase_at(ts: float) -> str:
        best = None
        for start, end, name in ranges[:bisect.bisect_right(starts, ts)]:
            if start <= ts <= end and (best is None or end - start < best[1] - best[0]):
                best = (start, end, name)
        return best[2] if best else "(outside the phases)"

    out: dict = defaultdict(lambda: {"idle_ms": 0.0, "gaps": 0, "sync_ms": 0.0, "syncs": 0})
    busy, end = 0.0, None
    for e in gpu:
        if end is not None and e["ts"] - end > min_gap_us:
            launch = launches.get(e.get("args", {}).get("correlation"))
            phase = phase_at(launch["ts"]) if launch else "(no launch found)"
            out[phase]["idle_ms"] += (e["ts"] - end) / 1e3
            out[phase]["gaps"] += 1
        e_end = e["ts"] + e["dur"]
        if end is None or e_end > end:
            busy += e_end - max(e["ts"], end if end is not None else e["ts"])
            end = e_end
    for e in events:
        if e.get("cat") == "cuda_runtime" and e["name"].startswith(SYNC_CALLS):
            rec = out[phase_at(e["ts"])]
            rec["sync_ms"] += e["dur"] / 1e3
            rec["syncs"] += 1
    result = {k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()} for k, v in out.items()}
    span = (end - gpu[0]["ts"]) / 1e3 if gpu else 0.0
    result["_total"] = {"gpu_busy_ms": round(busy / 1e3, 3), "gpu_span_ms": round(span, 3)}
    return result


def format_gaps(result: dict, steps: int) -> str:
    total = result.get("_total", {})
    lines = [f"GPU busy {total.get('gpu_busy_ms', 0) / steps:.1f} ms of a {total.get('gpu_span_ms', 0) / steps:.1f} ms "
             f"span per step; idle per step by the host phase issuing the next work:"]
    rows = sorted(((k, v) for k, v in result.items() if k != "_total"), key=lambda kv: -kv[1]["idle_ms"])
    for name, v in rows:
        lines.append(f"  {name:<28} idle {v['idle_ms'] / steps:8.2f} ms in {v['gaps'] / steps:7.1f} gaps;  "
                     f"host syncs {v['syncs'] / steps:5.1f} taking {v['sync_ms'] / steps:7.2f} ms")
    return "\n".join(lines)


@contextlib.contextmanager
def wrapped(obj, name: str, label: str):
    """``obj.name`` runs inside ``record_function(label)`` for the duration."""
    import torch

    inner, own = getattr(obj, name), name in vars(obj)

    def call(*args, **kwargs):
        with torch.profiler.record_function(label):
            return inner(*args, **kwargs)

    setattr(obj, name, call)
    try:
        yield
    finally:
        if own:
            setattr(obj, name, inner)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def phase_ranges(pairs):
    """``pairs``: (object, method name, label) to wrap for the duration."""
    with contextlib.ExitStack() as stack:
        for obj, name, label in pairs:
            stack.enter_context(wrapped(obj, name, label))
        yield
