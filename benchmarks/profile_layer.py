"""Where a training step of the project's M2 stack spends its GPU time (torch.profiler, kernels grouped by name).

    python3 benchmarks/profile_layer.py        # env L (2048), CAUSAL (0), PATH_ (fused|kernels|torch), ROWS (30),
                                               # COMPILE=1 (torch.compile the stack), CPU=1 (host-side table too)
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import kernels, timed  # noqa: E402
from layer_bench import NLAYERS, TOKENS, D, m2_layer  # noqa: E402

from m2dist.kernels import accelerate  # noqa: E402


def main():
    L = int(os.environ.get("L", 2048))
    causal = os.environ.get("CAUSAL") == "1"
    with kernels(os.environ.get("PATH_", "fused")):  # accelerate reads the path's M2DIST_* switches
        m = accelerate(nn.Sequential(*[m2_layer(L, causal) for _ in range(NLAYERS)])).cuda()
        if os.environ.get("COMPILE") == "1":
            m = torch.compile(m)
        x = torch.randn(TOKENS // L, L, D, device="cuda", requires_grad=True)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = m(x)
            y.float().square().mean().backward()

        wall = timed(step)
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CUDA]
        if os.environ.get("CPU") == "1":  # also the host side: which Python-level ops cost launch time
            acts.append(torch.profiler.ProfilerActivity.CPU)
        with torch.profiler.profile(activities=acts) as prof:
            step()
            torch.cuda.synchronize()
    gpu = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
    print(f"step: {wall * 1e3:.1f} ms wall (median of 10), {gpu:.1f} ms of GPU kernels; "
          f"{TOKENS / wall:,.0f} tok/s")
    if os.environ.get("CPU") == "1":
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=int(os.environ.get("ROWS", 30)),
                                        max_name_column_width=50))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=int(os.environ.get("ROWS", 30)),
                                    max_name_column_width=70))


if __name__ == "__main__":
    main()
