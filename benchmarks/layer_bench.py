"""12-layer stacks on one GPU, one process: the project's M2-BERT layers (with and without the Triton kernels)
against the project's Transformer+SDPA layer (eager and torch.compile) and, when ``M2_REFERENCE_DIR`` points at
the public reference modules (see shared/bench/README.md), the public M2 layers, all in the same run.

    python3 benchmarks/layer_bench.py    # -> benchmarks/results/layer_bench.json (or $OUT/layer_bench.json)

Same method as the anchor (shared/bench/bench_ref.py): BERT-base shape (d=768, intermediate 3072, 12 heads, Monarch
nblocks=4, residual long conv, filter order 128), 32768 tokens per step, bf16 autocast over fp32 parameters,
forward-only and forward+backward tokens/s (median of 10 after 3 warm-ups), peak memory.
Env: LENS (default 512..16384), TOKENS (32768), COMPILE_LENS (lengths where the Transformer is also compiled,
default 2048,16384; also where the M2 stack's per-op-kernel and PyTorch paths run), M2_COMPILE_LENS (where the fused M2
stack is also compiled, default 2048,16384), COMPILE_MODE (torch.compile's mode for every compiled row, e.g.
reduce-overhead for CUDA graphs), MODELS (comma list of name prefixes to keep), REF_LENS (lengths for the public reference), RESULT_NAME, BUDGET_S (stop starting new rows after this many seconds).
"""
from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, env_info, kernels, save, timed  # noqa: E402

from m2dist.kernels import accelerate  # noqa: E402
from m2dist.models.attention import SelfAttention  # noqa: E402
from m2dist.models.blocks import M2BertLayer, PostNormBlock  # noqa: E402
from m2dist.models.dense_mlp import DenseMLP  # noqa: E402
from m2dist.models.monarch_mlp import MonarchGLU  # noqa: E402
from m2dist.models.sequence_mixer import M2SequenceMixer  # noqa: E402

D, INTER, HEADS, NLAYERS, NBLOCKS, EPS = 768, 3072, 12, 12, 4, 1e-12
TOKENS = int(os.environ.get("TOKENS", 32768))
LENS = [int(x) for x in os.environ.get("LENS", "512,1024,2048,4096,8192,16384").split(",")]
COMPILE_LENS = {int(x) for x in os.environ.get("COMPILE_LENS", "2048,16384").split(",") if x}
M2_COMPILE_LENS = {int(x) for x in os.environ.get("M2_COMPILE_LENS", "2048,16384").split(",") if x}
ONLY = set(filter(None, os.environ.get("MODELS", "").split(",")))
BUDGET_S = float(os.environ.get("BUDGET_S", 1e9))
REF_DIR = os.environ.get("M2_REFERENCE_DIR")
REF_LENS = {int(x) for x in os.environ.get("REF_LENS", ",".join(map(str, LENS))).split(",") if x}
RESULT_NAME = os.environ.get("RESULT_NAME", "layer_bench.json")
COMPILE_MODE = os.environ.get("COMPILE_MODE") or None  # e.g. reduce-overhead (CUDA graphs), for every compiled row


ENV_KNOBS = ("LENS", "TOKENS", "COMPILE_LENS", "M2_COMPILE_LENS", "MODELS", "BUDGET_S", "REF_LENS", "M2_REFERENCE_DIR",
             "COMPILE_MODE")


def m2_layer(L: int, causal: bool) -> nn.Module:
    """M2-BERT-base layer (the anchor's shape; causal=True is the same layer with causal filters)."""
    mixer = M2SequenceMixer(D, L, causal=causal, filter_order=128, residual_long_conv=True)
    return M2BertLayer(mixer, MonarchGLU(D, INTER, nblocks=NBLOCKS), D, EPS)


def tx_layer(causal: bool) -> nn.Module:
    return PostNormBlock(SelfAttention(D, HEADS, causal=causal), DenseMLP(D, INTER), D, EPS)


def candidates(L: int, causal: bool):
    """(name, layer factory, code path (common.PATHS), compile?) for one length and direction."""
    d = "causal" if causal else "bidir"
    yield f"m2_fused_{d}", lambda: m2_layer(L, causal), "fused", False
    if L in M2_COMPILE_LENS:  # what inductor adds around the fused kernels (residual adds, LayerNorm)
        yield f"m2_fused_compiled_{d}", lambda: m2_layer(L, causal), "fused", True
    if L in COMPILE_LENS:
        yield f"m2_kernels_{d}", lambda: m2_layer(L, causal), "kernels", False  # per-op kernels (previous attempt)
        yield f"m2_torch_{d}", lambda: m2_layer(L, causal), "torch", False
    yield f"tx_sdpa_{d}", lambda: tx_layer(causal), "torch", False
    if L in COMPILE_LENS:
        yield f"tx_sdpa_compiled_{d}", lambda: tx_layer(causal), "torch", True
    if REF_DIR and L in REF_LENS:
        sys.path.insert(0, REF_DIR)
        import bench_ref  # the anchor harness's own layer classes, from the git-ignored reference folder

        yield f"m2_ref_{d}", lambda: bench_ref.RefM2Layer(L, not causal), "torch", False


def measure(make, L: int, path: str, compile_: bool) -> dict:
    B = max(1, TOKENS // L)
    torch.manual_seed(0)
    with kernels(path):  # accelerate reads the path's M2DIST_* switches
        m = accelerate(nn.Sequential(*[make() for _ in range(NLAYERS)])).cuda()
        nparam = sum(p.numel() for p in m.parameters())
        if compile_:
            m = torch.compile(m, mode=COMPILE_MODE)
        x = torch.randn(B, L, D, device="cuda", requires_grad=True)

        def fwd():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                m(x)

        def train():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = m(x)
            y.float().square().mean().backward()

        torch.cuda.reset_peak_memory_stats()
        tf = timed(fwd)
        tt = timed(train)
        mem = torch.cuda.max_memory_allocated() / 2**30
    return dict(L=L, B=B, params_M=round(nparam / 1e6, 2), fwd_tok_per_s=round(B * L / tf),
                train_tok_per_s=round(B * L / tt), peak_GiB=round(mem, 2))


def main():
    info = emit(dict(env_info(), D=D, INTER=INTER, NLAYERS=NLAYERS, TOKENS=TOKENS, reference=bool(REF_DIR)))
    rows, start = [], time.time()
    for L in LENS:
        for causal in (False, True):
            for name, make, path, compile_ in candidates(L, causal):
                if ONLY and not any(name.startswith(o) for o in ONLY):
                    continue
                if time.time() - start > BUDGET_S:
                    rows.append(emit(dict(model=name, L=L, skipped="time budget")))
                    continue
                try:
                    row = dict(model=name, **measure(make, L, path, compile_))
                except Exception as e:  # OOM or an unsupported combination: record it, keep going
                    row = dict(model=name, L=L, error=repr(e)[:300])
                rows.append(emit(row))
                torch.cuda.empty_cache()
                save(RESULT_NAME, dict(info=info, rows=rows, command="python3 benchmarks/layer_bench.py",
                                      env={k: os.environ[k] for k in ENV_KNOBS if k in os.environ}))
    summarize(rows)


def summarize(rows):
    """Print the targets: M2 (fused) vs the public reference and vs compiled Transformer+SDPA, training tok/s."""
    by = {(r["model"], r["L"]): r.get("train_tok_per_s") for r in rows}
    print("\nL      dir       m2_fused m2_fused_c m2_kernels  m2_torch  tx_eager tx_compiled   m2_ref   x_ref  x_txc"
          "  (train tok/s; x_ref, x_txc: the best m2_fused row over m2_ref and tx_sdpa_compiled)")
    for L in LENS:
        for d in ("bidir", "causal"):
            names = ("m2_fused", "m2_fused_compiled", "m2_kernels", "m2_torch", "tx_sdpa", "tx_sdpa_compiled", "m2_ref")
            vals = [by.get((f"{m}_{d}", L)) for m in names]
            k = max([v for v in vals[:2] if v] or [0])
            ref, txc = vals[6], vals[5]
            ratio = lambda a, b: f"{a / b:5.2f}" if a and b else "   - "  # noqa: E731
            print(f"{L:<6} {d:<7} " + "  ".join(f"{v:>9,}" if v else "        -" for v in vals)
                  + f"  {ratio(k, ref)}  {ratio(k, txc)}")


if __name__ == "__main__":
    main()
