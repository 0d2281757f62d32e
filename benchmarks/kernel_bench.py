"""Kernel micro-benchmarks on the GPU, against ceilings measured in the same run.

    python3 benchmarks/kernel_bench.py            # writes benchmarks/results/kernel_bench.json (or $OUT/...)

Block-diagonal: M = 65536 tokens (BERT-base, 32K tokens x 2 for headroom, as the anchor), the GLU's two layers
(768 -> 6144 and 3072 -> 768) at nblocks 4 and the first at 1 and 16, forward and forward+backward, as TFLOP/s and
as a fraction of a dense GEMM of the same (M, in, out) shape. Long conv: 32768 tokens x 768 channels at L in
{1024, 4096, 16384}, causal and bidirectional, as GB/s of the fewest bytes (u and y in bf16, k in fp32) against
the copy ceiling; also cuFFT's own rfft+irfft pair, the floor of any cuFFT-based path.
Mixer core: the whole fused mixer core (short conv, gates, both long convs, skips; m2dist/kernels/mixer_core.py)
at 32768 tokens x 768 channels against the per-op-kernel and PyTorch paths of ``m2dist.ops.mixer_core``, as % of
the copy ceiling counting the fewest bytes (z, u in, y out; backward dy, z, u in, dz, du out).
Monarch: the order-2 Monarch layer (MonarchLinear) at BERT-base MLP shapes (768 -> 3072 and 3072 -> 768, nblocks 4,
32768 tokens, bf16, with bias): the permutation-fused kernels (m2dist/kernels/monarch_matmul.py), the layer's einsum
path and a dense GEMM of the same in/out size, forward and forward+backward, as ms and as TFLOP/s counting the Monarch
FLOPs (the dense row also at its own FLOPs, the ceiling).
Env: ``PARTS`` (blockdiag,long_conv,mixer,monarch), ``M2_REFERENCE_DIR`` adds the public reference's blockdiag_multiply and fftconv_ref; ``QUICK=1`` fewer shapes.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ceilings, emit, env_info, kernels, save, timed  # noqa: E402

from m2dist.kernels.block_diagonal import block_diagonal_matmul  # noqa: E402
from m2dist.kernels.fft_conv import fft_long_conv  # noqa: E402
from m2dist.kernels import monarch_fft_conv  # noqa: E402
from m2dist.kernels.monarch_matmul import monarch_matmul  # noqa: E402
from m2dist.monarch import MonarchLinear  # noqa: E402
from m2dist.ops import long_conv  # noqa: E402

QUICK = os.environ.get("QUICK") == "1"


class backend:
    """``with backend("cublas"):`` times the block-diagonal autograd.Function on its cuBLAS backend."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.prev = os.environ.get("M2DIST_BLOCKDIAG")
        os.environ["M2DIST_BLOCKDIAG"] = self.name

    def __exit__(self, *exc):
        if self.prev is None:
            os.environ.pop("M2DIST_BLOCKDIAG", None)
        else:
            os.environ["M2DIST_BLOCKDIAG"] = self.prev


REF_DIR = os.environ.get("M2_REFERENCE_DIR")
SMOKE = not torch.cuda.is_available()  # CPU smoke run of the script itself (tiny shapes, interpreter)
dev, bf16 = ("cpu" if SMOKE else "cuda"), torch.bfloat16


def _reference_ops():
    if not REF_DIR:
        return None, None
    sys.path.insert(0, REF_DIR)
    from src.mm.blockdiag_multiply import blockdiag_multiply
    from src.mm.hyena_utils import fftconv_ref

    return blockdiag_multiply, fftconv_ref


def block_diagonal_rows(ceil: dict, ref_bd) -> list:
    rows = []
    M = 64 if SMOKE else 65536
    cases = [(32, 64, 2)] if SMOKE else [(768, 6144, 4), (3072, 768, 4)] if QUICK else [(768, 6144, 4), (3072, 768, 4), (768, 6144, 1), (768, 6144, 16)]
    for d_in, d_out, nb in cases:
        p, q = d_in // nb, d_out // nb
        x = torch.randn(M, d_in, device=dev, dtype=bf16, requires_grad=True)
        w = (torch.randn(nb, q, p, device=dev) / p**0.5).to(bf16).requires_grad_()
        wd = (torch.randn(d_out, d_in, device=dev) / d_in**0.5).to(bf16).requires_grad_()
        gy = torch.randn(M, d_out, device=dev, dtype=bf16)
        flops = 2 * M * d_in * d_out / nb
        dense_flops = 2 * M * d_in * d_out
        min_bytes = (x.numel() + w.numel() + M * d_out) * 2
        einsum = lambda: torch.einsum("mbp,bqp->mbq", x.view(M, nb, p), w).reshape(M, d_out)  # the layer's own path

        def train(f):
            def step():
                x.grad = w.grad = wd.grad = None
                f().backward(gy)
            return step

        with torch.no_grad(), backend("triton"):
            t_tri = timed(lambda: block_diagonal_matmul(x, w), reps=20)
        with torch.no_grad():
            t_ein = timed(einsum, reps=20)
            t_dense = timed(lambda: F.linear(x, wd), reps=20)
            t_ref = timed(lambda: ref_bd(x, w), reps=20) if ref_bd else None
        with torch.no_grad(), backend("cublas"):
            t_cub = timed(lambda: block_diagonal_matmul(x, w), reps=20)
        with backend("triton"):
            tt_tri = timed(train(lambda: block_diagonal_matmul(x, w)), reps=10)
        tt_ein = timed(train(einsum), reps=10)
        with backend("cublas"):
            tt_cub = timed(train(lambda: block_diagonal_matmul(x, w)), reps=10)
        tt_dense = timed(train(lambda: F.linear(x, wd)), reps=10)
        name = f"blockdiag_{M}x{d_in}->{d_out}_nb{nb}"
        dense_rate = dense_flops / t_dense / 1e12
        row = dict(micro=name,
                   fwd_triton_tflops=round(flops / t_tri / 1e12, 1),
                   fwd_triton_GBps_min_bytes=round(min_bytes / t_tri / 1e9),
                   fwd_einsum_tflops=round(flops / t_ein / 1e12, 1),
                   fwd_cublas_strided_tflops=round(flops / t_cub / 1e12, 1),
                   fwd_cublas_pct_of_dense=round(100 * flops / t_cub / 1e12 / dense_rate, 1),
                   fwd_dense_same_shape_tflops=round(dense_rate, 1),
                   fwd_triton_pct_of_dense=round(100 * flops / t_tri / 1e12 / dense_rate, 1),
                   fwd_triton_pct_of_copy_bw=round(100 * min_bytes / t_tri / 1e9 / ceil["d2d_copy_2GiB_GBps"], 1),
                   train_triton_tflops=round(3 * flops / tt_tri / 1e12, 1),
                   train_einsum_tflops=round(3 * flops / tt_ein / 1e12, 1),
                   train_cublas_strided_tflops=round(3 * flops / tt_cub / 1e12, 1),
                   train_cublas_pct_of_dense=round(100 * (flops / tt_cub) / (dense_flops / tt_dense), 1),
                   train_dense_same_shape_tflops=round(3 * dense_flops / tt_dense / 1e12, 1),
                   train_triton_pct_of_dense=round(100 * (flops / tt_tri) / (dense_flops / tt_dense), 1))
        if t_ref:
            row["fwd_public_ref_tflops"] = round(flops / t_ref / 1e12, 1)
        rows.append(emit(row))
        del x, w, wd, gy
        torch.cuda.empty_cache() if not SMOKE else None
    return rows


def long_conv_rows(ceil: dict, ref_fft) -> list:
    rows = []
    H = 8 if SMOKE else 768
    for L in (16, 256) if SMOKE else ((1024, 16384) if QUICK else (1024, 2048, 4096, 16384)):
        B = 2 if SMOKE else 32768 // L
        for bidir in (True, False):
            u = torch.randn(B, H, L, device=dev, dtype=bf16, requires_grad=True)
            kf = (torch.randn(H, L, device=dev) / L**0.5).requires_grad_()
            kr = (torch.randn(H, L, device=dev) / L**0.5).requires_grad_() if bidir else None
            skip = torch.randn(H, device=dev, requires_grad=True)
            gy = torch.randn_like(u)
            nk = 2 if bidir else 1
            fwd_bytes = 2 * u.numel() * 2 + nk * kf.numel() * 4
            # backward: read dy and u, write du; read k, write dk
            train_bytes = fwd_bytes + 3 * u.numel() * 2 + 2 * nk * kf.numel() * 4

            def train(f):
                def step():
                    u.grad = kf.grad = skip.grad = None
                    if kr is not None:
                        kr.grad = None
                    f().backward(gy)
                return step

            fused = lambda: fft_long_conv(u, kf, kr, skip)  # noqa: E731
            ref = lambda: long_conv(u, kf, kr, skip)  # noqa: E731  (m2dist.ops: the PyTorch reference)
            with torch.no_grad():
                t_ref = timed(ref, reps=20)
            tt_ref = timed(train(ref))
            with torch.no_grad():
                t_fused = timed(fused, reps=20)
                n = 2 * L
                uf = u.detach().float()
                t_pair = timed(lambda: torch.fft.irfft(torch.fft.rfft(uf, n=n), n=n), reps=20)
                del uf
                t_pub = None
                if ref_fft:
                    bias = skip.detach()[None, :, None]
                    krd = kr.detach() if bidir else None
                    t_pub = timed(lambda: ref_fft(u.detach(), kf.detach(), bias, None, gelu=False, k_rev=krd), reps=20)
            tt_fused = timed(train(fused))
            monarch = {}
            if monarch_fft_conv.supports(L):  # opt-in kernel: a failure here is recorded, not fatal
                mon = lambda: monarch_fft_conv.monarch_long_conv(u, kf, kr, skip)  # noqa: E731
                try:
                    with torch.no_grad():
                        y_ref = ref().float()
                        err = ((mon().float() - y_ref).norm() / y_ref.norm()).item()
                        t_mon = timed(mon, reps=20)
                    tt_mon = timed(train(mon))
                    monarch = dict(monarch_rel_err_vs_ref=float(f"{err:.2e}"), fwd_monarch_ms=round(t_mon * 1e3, 3),
                                   fwd_monarch_pct_of_copy_bw=round(100 * fwd_bytes / t_mon / 1e9 / ceil["d2d_copy_2GiB_GBps"], 1),
                                   train_monarch_ms=round(tt_mon * 1e3, 3))
                except Exception as e:  # noqa: BLE001
                    monarch = dict(monarch_error=repr(e)[:300])
            copy = ceil["d2d_copy_2GiB_GBps"]
            row = dict(micro=f"long_conv_{'bidir' if bidir else 'causal'}_B{B}_H{H}_L{L}",
                       fwd_fused_ms=round(t_fused * 1e3, 3), fwd_ref_ms=round(t_ref * 1e3, 3),
                       fwd_fused_GBps_min_bytes=round(fwd_bytes / t_fused / 1e9),
                       fwd_fused_pct_of_copy_bw=round(100 * fwd_bytes / t_fused / 1e9 / copy, 1),
                       fwd_ref_GBps_min_bytes=round(fwd_bytes / t_ref / 1e9),
                       cufft_rfft_irfft_pair_ms=round(t_pair * 1e3, 3),
                       train_fused_ms=round(tt_fused * 1e3, 3), train_ref_ms=round(tt_ref * 1e3, 3),
                       train_fused_GBps_min_bytes=round(train_bytes / tt_fused / 1e9),
                       train_fused_pct_of_copy_bw=round(100 * train_bytes / tt_fused / 1e9 / copy, 1))
            row.update(monarch)
            if t_pub:
                row["fwd_public_fftconv_ref_ms"] = round(t_pub * 1e3, 3)
            rows.append(emit(row))
            del u, kf, kr, skip, gy
            torch.cuda.empty_cache() if not SMOKE else None if not SMOKE else None
    return rows


def mixer_rows(ceil):
    """The fused mixer core against the per-op-kernel and PyTorch paths of the same op (the mixer's core module as
    ``accelerate`` converts it under each path's switches), at BERT-base width and 32K tokens, bidirectional with
    the residual long conv, bf16 z (autocast)."""
    from m2dist.kernels import accelerate
    from m2dist.models.sequence_mixer import MixerCore

    rows, H = [], (8 if SMOKE else 768)
    lens = [16] if SMOKE else ([2048] if QUICK else [1024, 2048, 16384])
    copy = ceil["d2d_copy_2GiB_GBps"]
    for L in lens:
        B = 2 if SMOKE else 32768 // L
        g = torch.Generator(device=dev).manual_seed(0)
        z = torch.randn(B, L, 3 * H, device=dev, generator=g).to(bf16).requires_grad_()
        u = torch.randn(B, L, H, device=dev, generator=g, requires_grad=True)
        w, b = torch.randn(3 * H, 1, 3, device=dev, requires_grad=True), torch.randn(3 * H, device=dev, requires_grad=True)
        filt = tuple((torch.randn(H, L, device=dev) / L**0.5).requires_grad_() for _ in range(2)) + \
            (torch.randn(H, device=dev, requires_grad=True),)
        res = tuple((torch.randn(H, L, device=dev) / L**0.5).requires_grad_() for _ in range(2)) + \
            (torch.randn(H, device=dev, requires_grad=True),)
        gy = torch.randn(B, L, H, device=dev, dtype=bf16)
        tok = B * L
        fwd_bytes = tok * (3 * H * 2 + H * 4 + H * 2)  # z bf16, u fp32 in; y bf16 out
        train_bytes = fwd_bytes + tok * (H * 2 + 3 * H * 2 + H * 4 + 3 * H * 2 + H * 4)  # dy, z, u in; dz, du out
        core = None

        def call():
            with torch.autocast(dev, dtype=bf16):  # as in the model: the reference's short conv runs in bf16
                return core(z, u, w, b, filt, res)

        def train():
            call().backward(gy)

        row = dict(micro=f"mixer_core_bidir_B{B}_H{H}_L{L}")
        for path in ("fused", "kernels", "torch"):
            with kernels(path):
                core = accelerate(MixerCore())  # FusedMixerCore, LongConvKernelCore, MixerCore
                with torch.no_grad():
                    tf = timed(call, reps=10)
                tt = timed(train, reps=10)
            row.update({f"fwd_{path}_ms": round(tf * 1e3, 3), f"train_{path}_ms": round(tt * 1e3, 3),
                        f"fwd_{path}_pct_of_copy_bw": round(100 * fwd_bytes / tf / 1e9 / copy, 1),
                        f"train_{path}_pct_of_copy_bw": round(100 * train_bytes / tt / 1e9 / copy, 1)})
        rows.append(emit(row))
        del z, u, w, b, filt, res, gy
        if not SMOKE:
            torch.cuda.empty_cache()
    return rows


def monarch_rows():
    """MonarchLinear three ways at the BERT-base MLP shapes; TFLOP/s count the Monarch FLOPs
    2*M*(nb*r*p + nb*s*r) per forward (x3 for training), so the three paths compare by time."""
    rows = []
    M = 64 if SMOKE else 32768
    cases = [(32, 64, 4), (64, 32, 4)] if SMOKE else [(768, 3072, 4), (3072, 768, 4)]
    for d_in, d_out, nb in cases:
        torch.manual_seed(0)
        layer = MonarchLinear(d_in, d_out, nb).to(dev, bf16)
        weights = (layer.weight1, layer.weight2, layer.bias)
        x = torch.randn(M, d_in, device=dev, dtype=bf16, requires_grad=True)
        dense = torch.nn.Linear(d_in, d_out, device=dev, dtype=bf16)
        gy = torch.randn(M, d_out, device=dev, dtype=bf16)
        flops = 2 * M * (layer.weight1.numel() + layer.weight2.numel())
        dense_flops = 2 * M * d_in * d_out

        kernel = lambda: monarch_matmul(x, *weights)  # noqa: E731
        einsum = lambda: layer(x)  # noqa: E731  (the layer's own path: not converted)

        def train(f):
            def step():
                for t in (x, *weights, *dense.parameters()):
                    t.grad = None
                f().backward(gy)
            return step

        with torch.no_grad():
            y = kernel().float()
            y_ref = einsum().float()
            err = ((y - y_ref).norm() / y_ref.norm()).item()
            t_ker = timed(kernel, reps=20)
            t_ein = timed(einsum, reps=20)
            t_dense = timed(lambda: dense(x), reps=20)
        tt_ker = timed(train(kernel))
        tt_ein = timed(train(einsum))
        tt_dense = timed(train(lambda: dense(x)))
        row = dict(micro=f"monarch_{M}x{d_in}->{d_out}_nb{nb}", kernel_rel_err_vs_einsum=float(f"{err:.2e}"),
                   monarch_gflop_fwd=round(flops / 1e9, 1), dense_gflop_fwd=round(dense_flops / 1e9, 1))
        for path, tf, tt in (("kernel", t_ker, tt_ker), ("einsum", t_ein, tt_ein), ("dense", t_dense, tt_dense)):
            row.update({f"fwd_{path}_ms": round(tf * 1e3, 3), f"train_{path}_ms": round(tt * 1e3, 3),
                        f"fwd_{path}_tflops": round(flops / tf / 1e12, 1),
                        f"train_{path}_tflops": round(3 * flops / tt / 1e12, 1)})
        row.update(fwd_dense_own_flops_tflops=round(dense_flops / t_dense / 1e12, 1),
                   train_dense_own_flops_tflops=round(3 * dense_flops / tt_dense / 1e12, 1),
                   fwd_kernel_speedup_vs_einsum=round(t_ein / t_ker, 2),
                   train_kernel_speedup_vs_einsum=round(tt_ein / tt_ker, 2))
        rows.append(emit(row))
        del layer, weights, x, dense, gy
        if not SMOKE:
            torch.cuda.empty_cache()
    return rows


def main():
    info = emit(env_info())
    ceil = emit(ceilings())
    ref_bd, ref_fft = _reference_ops()
    parts = os.environ.get("PARTS", "blockdiag,long_conv,mixer,monarch").split(",")
    rows = (block_diagonal_rows(ceil, ref_bd) if "blockdiag" in parts else []) + \
        (long_conv_rows(ceil, ref_fft) if "long_conv" in parts else []) + \
        (mixer_rows(ceil) if "mixer" in parts else []) + \
        (monarch_rows() if "monarch" in parts else [])
    save("kernel_bench.json", dict(info=info, ceilings=ceil, rows=rows,
                                   command="python3 benchmarks/kernel_bench.py"))


if __name__ == "__main__":
    main()
