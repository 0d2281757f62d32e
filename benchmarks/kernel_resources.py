"""Compile every Triton kernel variant the launchers use for an H100/H200 (sm_90), without a GPU, and report what
ptxas gives each: registers per thread and spill bytes.

    python benchmarks/kernel_resources.py      # -> benchmarks/results/kernel_resources.json (or $OUT/...)

Why: the interpreter (how the CPU tests run the kernels) executes Python semantics, so a kernel can pass every CPU
test and still fail to compile for the GPU; and a kernel that spills registers moves far more bytes than its
tensors, which no CPU test sees. Triton's compiler and ptxas run on any host. Run with ``TRITON_INTERPRET`` unset
(``triton.jit`` returns interpreted functions otherwise). Prints one line per variant; exits 1 at the first that
fails to compile. ``tests/kernels/test_kernel_resources.py`` runs it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import env_info, save  # noqa: E402

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_resources.py: run with TRITON_INTERPRET unset")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from m2dist.kernels import block_diagonal, fft_conv, glu, mixer_core, monarch_fft_conv  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_for_sm90(fn, constexprs: dict, dtypes: dict, odd_ints: tuple = (), **options):
    """Compile ``fn`` with the given constexpr values; pointers are fp32 unless ``dtypes`` names them, every other
    runtime argument a 32-bit int. As the launcher's JIT does at run time, pointers are taken as 16-byte aligned and
    ints as multiples of 16 (``tt.divisibility``; at BERT-base sizes they are), except those named in ``odd_ints``:
    without these hints loads are not vectorised or pipelined, and the registers and spills would be another
    kernel's."""
    sig, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            continue
        sig[p.name] = "*" + dtypes.get(p.name, "fp32") if p.name.endswith("_ptr") else "i32"
        if p.name not in odd_ints:
            attrs[(i,)] = [["tt.divisibility", 16]]
    missing = [n for n, t in sig.items() if t == "constexpr" and n not in constexprs]
    if missing:
        raise ValueError(f"{fn.__name__}: no value for constexpr {missing}")
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs), target=TARGET,
                          options=options)


def ptxas_report(ptx: str) -> dict:
    """Registers per thread and spill bytes, from ``ptxas -v`` on the kernel's PTX."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([PTXAS, f"-arch=sm_{TARGET.arch}a", "-v", src, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return dict(registers=int(regs.group(1)) if regs else None,
                spill_store_bytes=int(spill.group(1)) if spill else None,
                spill_load_bytes=int(spill.group(2)) if spill else None)


def variants():
    """(label, kernel, constexprs, pointer dtypes, options): the configurations the launchers use on a GPU."""
    bf16 = "bf16"
    act = {"z_ptr": bf16, "u_ptr": bf16, "dy_ptr": bf16, "y_ptr": bf16, "g1_ptr": bf16, "dz_ptr": bf16,
           "du_ptr": bf16}
    BT, BH = mixer_core._blocks(768)  # the launchers' tiles and frequency pairs per program, at BERT-base width
    _, BF = mixer_core._pair_grid(2, 768, 4096)
    warps = dict(num_warps=mixer_core.PASS_WARPS)
    for res in (True, False):
        for mask in (True, False):
            flags = dict(HAS_RES=res, HAS_MASK=mask, BT=BT, BH=BH)
            yield f"mixer_core._fwd_pre res={res} mask={mask}", mixer_core._fwd_pre, flags, act, warps
            yield f"mixer_core._fwd_post res={res} mask={mask}", mixer_core._fwd_post, flags, act, warps
            yield f"mixer_core._bwd_pre res={res} mask={mask}", mixer_core._bwd_pre, flags, act, warps
        yield (f"mixer_core._bwd_conv res={res}", mixer_core._bwd_conv, dict(HAS_RES=res, BT=BT, BH=BH), act,
               dict(num_warps=mixer_core.CONV_WARPS))
    for mask in (True, False):
        yield (f"mixer_core._bwd_gates mask={mask}", mixer_core._bwd_gates, dict(HAS_MASK=mask, BT=BT, BH=BH), act,
               warps)
    spectral = dict(num_warps=mixer_core.SPECTRAL_WARPS)
    yield "mixer_core._spectral_fwd", mixer_core._spectral_fwd, dict(BF=BF), {}, spectral
    yield "mixer_core._spectral_bwd", mixer_core._spectral_bwd, dict(BF=BF), {}, spectral
    yield "glu._glu_fwd", glu._glu_fwd, dict(BLOCK=1024), {"g_ptr": bf16, "a_ptr": bf16}, {}
    yield "glu._glu_bwd", glu._glu_bwd, dict(BLOCK=1024), {"g_ptr": bf16, "da_ptr": bf16, "dg_ptr": bf16}, {}
    yield ("fft_conv._crop_skip_kernel", fft_conv._crop_skip_kernel,
           dict(HAS_SKIP=True, SKIP_GRAD=True, UPCAST=False, BLOCK=2048), {"v_ptr": bf16, "out_ptr": bf16}, {})
    yield ("monarch_fft_conv._monarch_fft_conv_kernel", monarch_fft_conv._monarch_fft_conv_kernel,
           dict(N1=64, N2=32, HAS_SKIP=True, CONJ_K=False, PRECISION="tf32"), {"u_ptr": bf16, "out_ptr": bf16},
           dict(num_warps=8))
    mm = {"a_ptr": bf16, "b_ptr": bf16, "c_ptr": bf16, "bias_ptr": bf16}
    # Every autotune config, for the block-diagonal forward (A=k, B=n: x and W^T views); the other layouts (input
    # gradient, fp32 split-K weight gradient, the Monarch permutations' "none" views) at the first config.
    layouts = [("k", "n", "n", False, True, bf16), ("k", "k", "n", False, False, bf16),
               ("m", "n", "n", False, False, "fp32"), ("none", "k", "none", True, True, bf16),
               ("none", "n", "none", True, False, bf16), ("none", "none", "n", True, False, "fp32")]
    for i, cfg in enumerate(block_diagonal._GPU_CONFIGS):
        for a, b, c, g_inner, bias, c_dtype in (layouts if i == 0 else layouts[:1]):
            flags = dict(HAS_BIAS=bias, UPCAST=False, A_UNIT=a, B_UNIT=b, C_UNIT=c, G_INNER=g_inner,
                         **{k: cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "FLATTEN", "CTAS")})
            tile = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
            yield (f"block_diagonal._batched_matmul_kernel A={a} B={b} C={c} {tile} s{cfg.num_stages} "
                   f"w{cfg.num_warps} flatten={cfg.kwargs['FLATTEN']}", block_diagonal._batched_matmul_kernel,
                   flags, dict(mm, c_ptr=c_dtype), dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                                        odd_ints=("G", "S")))


def main() -> int:
    rows = []
    for label, fn, constexprs, dtypes, options in variants():
        start = time.time()
        try:
            compiled = compile_for_sm90(fn, constexprs, dtypes, **options)
        except Exception as e:  # say which variant, then fail
            print(f"FAIL {label}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
            return 1
        row = dict(kernel=label, cubin_bytes=len(compiled.asm["cubin"]), shared_bytes=compiled.metadata.shared,
                   num_warps=compiled.metadata.num_warps, **ptxas_report(compiled.asm["ptx"]),
                   compile_s=round(time.time() - start, 1))
        rows.append(row)
        print(f"ok   {label}: {row['registers']} registers, {row['spill_store_bytes']} bytes spilled, "
              f"{row['shared_bytes']} bytes shared", flush=True)
    save("kernel_resources.json", dict(info=dict(env_info(), target=f"sm_{TARGET.arch}"), rows=rows,
                                       command="python benchmarks/kernel_resources.py"))
    print(f"compiled {len(rows)} kernel variants for sm_{TARGET.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
