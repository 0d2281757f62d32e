"""Compile every Triton kernel for an H100/H200 (sm_90) down to a cubin, without a GPU.

The interpreter (how the CPU tests run the kernels) executes Python semantics, so a kernel can pass every CPU test
and still fail to compile for the GPU (an unsupported construct, a dot shape below 16, a constexpr used as a
value). Triton's compiler and ptxas run on any host, so this catches those here. Run as a script with
``TRITON_INTERPRET`` unset (``triton.jit`` returns interpreted functions otherwise); it prints one line per kernel
variant and exits non-zero at the first failure. ``tests/kernels/test_sm90_compile.py`` runs it.
"""
from __future__ import annotations

import os
import sys
import time

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from m2dist.kernels import block_diagonal, fft_conv, glu, m2_mixer, monarch_fft_conv  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def compile_for_sm90(fn, constexprs: dict, dtypes: dict | None = None, **options):
    """Compile ``fn`` with the given constexpr values; pointers are fp32 unless ``dtypes`` names them, every other
    runtime argument a 32-bit int. Returns the cubin's size."""
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*" + (dtypes or {}).get(p.name, "fp32")
        else:
            sig[p.name] = "i32"
    missing = [n for n, t in sig.items() if t == "constexpr" and n not in constexprs]
    if missing:
        raise ValueError(f"{fn.__name__}: no value for constexpr {missing}")
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=TARGET,
                              options=options)
    return len(compiled.asm["cubin"])


def variants():
    """(label, kernel, constexprs, pointer dtypes, options): the configurations the launchers use on a GPU."""
    bf16 = "bf16"
    act = {"z_ptr": bf16, "u_ptr": bf16, "dy_ptr": bf16, "y_ptr": bf16, "g1_ptr": bf16, "dz_ptr": bf16,
           "du_ptr": bf16}
    BT, BH = 64, 64  # m2_mixer._blocks on a GPU
    for res in (True, False):
        for mask in (True, False):
            flags = dict(HAS_RES=res, HAS_MASK=mask, BT=BT, BH=BH)
            yield f"m2_mixer._fwd_pre res={res} mask={mask}", m2_mixer._fwd_pre, flags, act, {}
            yield f"m2_mixer._fwd_post res={res} mask={mask}", m2_mixer._fwd_post, flags, act, {}
            yield f"m2_mixer._bwd_pre res={res} mask={mask}", m2_mixer._bwd_pre, flags, act, {}
        yield (f"m2_mixer._bwd_conv res={res}", m2_mixer._bwd_conv, dict(HAS_RES=res, BT=BT, BH=BH), act,
               dict(num_warps=8))
    yield "m2_mixer._bwd_gates", m2_mixer._bwd_gates, dict(HAS_MASK=True, BT=BT, BH=BH), act, {}
    yield "m2_mixer._spectral_fwd", m2_mixer._spectral_fwd, dict(BF=256), {}, {}
    yield "m2_mixer._spectral_bwd", m2_mixer._spectral_bwd, dict(BF=256), {}, {}
    yield "glu._glu_fwd", glu._glu_fwd, dict(BLOCK=1024), {"g_ptr": bf16, "a_ptr": bf16}, {}
    yield "glu._glu_bwd", glu._glu_bwd, dict(BLOCK=1024), {"g_ptr": bf16, "da_ptr": bf16, "dg_ptr": bf16}, {}
    yield ("fft_conv._crop_skip_kernel", fft_conv._crop_skip_kernel,
           dict(HAS_SKIP=True, SKIP_GRAD=True, UPCAST=False, BLOCK=2048), {"v_ptr": bf16, "out_ptr": bf16}, {})
    yield ("monarch_fft_conv._monarch_fft_conv_kernel", monarch_fft_conv._monarch_fft_conv_kernel,
           dict(N1=64, N2=32, HAS_SKIP=True, CONJ_K=False, PRECISION="tf32"), {"u_ptr": bf16, "out_ptr": bf16},
           dict(num_warps=8))
    mm = {"a_ptr": bf16, "b_ptr": bf16, "c_ptr": bf16, "bias_ptr": bf16}
    cfg = block_diagonal._GPU_CONFIGS[0]
    tiles = {k: cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "FLATTEN", "CTAS")}
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    # The block-diagonal forward and input gradient, its weight gradient (fp32 split-K partials), and the Monarch
    # permutations' "none" layouts.
    for a, b, c, g_inner, bias, c_dtype in (("k", "n", "n", False, True, bf16), ("k", "k", "n", False, False, bf16),
                                            ("m", "n", "n", False, False, "fp32"),
                                            ("none", "k", "none", True, True, bf16),
                                            ("none", "n", "none", True, False, bf16),
                                            ("none", "none", "n", True, False, "fp32")):
        flags = dict(HAS_BIAS=bias, UPCAST=False, A_UNIT=a, B_UNIT=b, C_UNIT=c, G_INNER=g_inner, **tiles)
        yield (f"block_diagonal._batched_matmul_kernel A={a} B={b} C={c}", block_diagonal._batched_matmul_kernel,
               flags, dict(mm, c_ptr=c_dtype), opts)


def main() -> int:
    n = 0
    for label, fn, constexprs, dtypes, options in variants():
        start = time.time()
        try:
            size = compile_for_sm90(fn, constexprs, dtypes, **options)
        except Exception as e:  # report which variant, then fail
            print(f"FAIL {label}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
            return 1
        print(f"ok   {label}: {size} bytes of sm_90 cubin in {time.time() - start:.1f} s", flush=True)
        n += 1
    print(f"compiled {n} kernel variants for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
