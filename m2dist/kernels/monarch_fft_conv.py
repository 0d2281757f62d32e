"""Long convolution with the FFT written as a Monarch product (FlashFFTConv's idea, m2-spec §1.3, §5.3), one Triton
program per (batch, channel) row: the whole transform, the spectral product, the inverse and the skip stay in
registers, so the row is read once (bf16) and written once (bf16) — the fewest bytes.

STATUS: correct on CPU (interpreter tests); NOT YET COMPILED OR TIMED ON A GPU. It is therefore opt-in
(``M2DIST_LONGCONV=monarch``); benchmarks/NOTES.md says what to measure first.

The transform. For N = N1*N2 write n = N2*n1 + n2 and k = k1 + N1*k2. Then, with A[n1, n2] = x[N2*n1 + n2]
(the natural row-major view of the row),
    X[k1 + N1*k2] = ( (F_N1 @ A) * T ) @ F_N2        T[k1, n2] = exp(-2 pi i k1 n2 / N)  (twiddles)
i.e. two batched DFT-matrix products (tensor-core matmuls) and one elementwise twiddle; the result comes out in
[k1, k2] order, which is fine because it is only multiplied pointwise by the kernel spectrum K (precomputed in the
same order) and transformed back by the conjugate steps in reverse:
    y = Re( conj(F_N1) @ ( ((X * K) @ conj(F_N2)) * conj(T) ) ) / N.
The input is zero-padded to N = 2L, so only the first N1/2 rows of A are non-zero and only the first N1/2 rows of y
are kept: the first and last products use half of F_N1. Per row that is 12 real matmuls of at most N1 x N2 x N2.

Limits of this first version: L a power of two with 256 <= L <= 2048 (N = 2L in {512..4096}, both factors >= 16
for tl.dot, a (64 x 64) complex fp32 tile in registers); matmuls in tf32 (~1e-3 relative, under bf16 output
rounding). Longer L needs a third Monarch factor or a split across programs.
The input gradient is the same kernel with conj(K) (a correlation); the filter gradient is a batch reduction done
in the frequency domain by `fft_conv.filter_grads`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from m2dist.kernels._triton import HAVE_TRITON, interpreting, tl, triton
from m2dist.kernels.fft_conv import build_kappa, filter_grads

MIN_L, MAX_L = 256, 2048

if HAVE_TRITON:

    @triton.jit
    def _cdot(ar, ai, br, bi, PRECISION: tl.constexpr):
        """Complex matmul (ar + i ai) @ (br + i bi) as four real tensor-core matmuls."""
        re = tl.dot(ar, br, input_precision=PRECISION) - tl.dot(ai, bi, input_precision=PRECISION)
        im = tl.dot(ar, bi, input_precision=PRECISION) + tl.dot(ai, br, input_precision=PRECISION)
        return re, im

    @triton.jit
    def _monarch_fft_conv_kernel(
        u_ptr, kr_ptr, ki_ptr, skip_ptr, out_ptr,
        f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
        H,
        N1: tl.constexpr, N2: tl.constexpr, HAS_SKIP: tl.constexpr, CONJ_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """out[r] = irfft(rfft(u[r], N) * K[r % H], N)[:L] (+ skip * u[r]), L = N/2, for row r = program_id."""
        HALF: tl.constexpr = N1 // 2
        L: tl.constexpr = HALF * N2
        row = tl.program_id(0).to(tl.int64)
        h = row % H
        rh = tl.arange(0, HALF)
        rf = tl.arange(0, N1)
        c = tl.arange(0, N2)
        tile_half = rh[:, None] * N2 + c[None, :]  # (HALF, N2): the row's L samples, row-major, coalesced
        tile_full = rf[:, None] * N2 + c[None, :]  # (N1, N2)
        a = tl.load(u_ptr + row * L + tile_half).to(tl.float32)

        # The DFT and twiddle tables (a few KB, L2-resident) are loaded at each use rather than kept live across
        # the kernel: with (64 x 64) complex fp32 tiles in flight, registers are the scarce resource, and an L2 hit
        # is cheaper than a spill.
        f1 = rf[:, None] * N1 + rh[None, :]  # F_N1[:, :HALF]: only the non-zero half of the input rows
        f2 = c[:, None] * N2 + c[None, :]
        # forward DFT along n1, twiddles, forward DFT along n2: X in [k1, k2] order
        br = tl.dot(tl.load(f1r_ptr + f1), a, input_precision=PRECISION)
        bi = tl.dot(tl.load(f1i_ptr + f1), a, input_precision=PRECISION)
        tr = tl.load(tr_ptr + tile_full)
        ti = tl.load(ti_ptr + tile_full)
        dr, di = _cdot(br * tr - bi * ti, br * ti + bi * tr, tl.load(f2r_ptr + f2), tl.load(f2i_ptr + f2), PRECISION)

        # spectral product with the kernel (stored per channel in the same [k1, k2] order)
        kr = tl.load(kr_ptr + h * (N1 * N2) + tile_full)
        ki = tl.load(ki_ptr + h * (N1 * N2) + tile_full)
        if CONJ_K:
            ki = -ki
        er = dr * kr - di * ki
        ei = dr * ki + di * kr

        # inverse: conj(F_N2), conj(T), then the real part of conj(F_N1)[:HALF] @ . (only the first L outputs)
        gr, gi = _cdot(er, ei, tl.load(f2r_ptr + f2), -tl.load(f2i_ptr + f2), PRECISION)
        tr = tl.load(tr_ptr + tile_full)
        ti = tl.load(ti_ptr + tile_full)
        hr = gr * tr + gi * ti
        hi = gi * tr - gr * ti
        f1t = rh[:, None] * N1 + rf[None, :]  # F_N1[:HALF, :]
        y = tl.dot(tl.load(f1r_ptr + f1t), hr, input_precision=PRECISION)
        y += tl.dot(tl.load(f1i_ptr + f1t), hi, input_precision=PRECISION)
        y = y * (1.0 / (N1 * N2))
        if HAS_SKIP:
            y += tl.load(skip_ptr + h).to(tl.float32) * a
        tl.store(out_ptr + row * L + tile_half, y.to(out_ptr.dtype.element_ty))


def supports(L: int) -> bool:
    return MIN_L <= L <= MAX_L and L & (L - 1) == 0


def factors(N: int) -> tuple[int, int]:
    """N = N1 * N2 with N1 >= N2, both powers of two, as square as possible."""
    n2 = 2 ** (int(math.log2(N)) // 2)
    return N // n2, n2


_TABLES: dict = {}


def _tables(N1: int, N2: int, device) -> tuple:
    """DFT matrices F_N1, F_N2 and twiddles T (real and imaginary parts, fp32), built once per size and device."""
    key = (N1, N2, str(device))
    if key not in _TABLES:
        N = N1 * N2

        def dft(n):
            k = torch.arange(n, dtype=torch.float64)
            return torch.exp(-2j * math.pi * torch.outer(k, k) / n)

        tw = torch.exp(-2j * math.pi * torch.outer(torch.arange(N1, dtype=torch.float64),
                                                   torch.arange(N2, dtype=torch.float64)) / N)
        parts = []
        for m in (dft(N1), dft(N2), tw):
            parts += [m.real.float().contiguous().to(device), m.imag.float().contiguous().to(device)]
        _TABLES[key] = tuple(parts)
    return _TABLES[key]


def _spectrum_blocks(k_fwd, k_rev, N1: int, N2: int):
    """Full FFT of the length-N kernel, rearranged to [k1, k2] = K[k1 + N1*k2]: (H, N1, N2) real and imag parts."""
    K = torch.fft.fft(build_kappa(k_fwd.float(), None if k_rev is None else k_rev.float(), N1 * N2))
    K = K.view(-1, N2, N1).transpose(1, 2)
    return K.real.contiguous(), K.imag.contiguous()


def _run(x: torch.Tensor, kr, ki, skip, conj: bool, N1: int, N2: int) -> torch.Tensor:
    B, H, L = x.shape
    out = torch.empty_like(x)
    _monarch_fft_conv_kernel[(B * H,)](
        x, kr, ki, skip if skip is not None else kr, out, *_tables(N1, N2, x.device), H,
        N1=N1, N2=N2, HAS_SKIP=skip is not None, CONJ_K=conj,
        PRECISION="ieee" if interpreting() else "tf32", num_warps=8,
    )
    return out


class MonarchFFTConv(torch.autograd.Function):
    """long_conv(u, k_fwd, k_rev, skip) for power-of-two 256 <= L <= 2048; see the module docstring."""

    @staticmethod
    def forward(ctx, u, k_fwd, k_rev, skip):
        u = u.contiguous()
        N1, N2 = factors(2 * u.shape[-1])
        with torch.autocast(u.device.type, enabled=False):
            kr, ki = _spectrum_blocks(k_fwd, k_rev, N1, N2)
            out = _run(u, kr, ki, skip, False, N1, N2)
        ctx.save_for_backward(u, k_fwd, k_rev, skip)
        return out

    @staticmethod
    def backward(ctx, gy):
        u, k_fwd, k_rev, skip = ctx.saved_tensors
        gy = gy.contiguous()
        n = 2 * u.shape[-1]
        N1, N2 = factors(n)
        gu = gskip = None
        with torch.autocast(u.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                kr, ki = _spectrum_blocks(k_fwd, k_rev, N1, N2)
                gu = _run(gy, kr, ki, skip, True, N1, N2)  # correlation with kappa: conj(K)
            G = torch.fft.rfft(gy.float(), n=n)
            gkf, gkr = filter_grads(u, G, k_fwd, k_rev, n, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
            if skip is not None and ctx.needs_input_grad[3]:
                gskip = (gy.float() * u.float()).sum((0, 2)).to(skip.dtype)
        return gu, gkf, gkr, gskip


def monarch_long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor] = None,
                      skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Same contract as ``m2dist.ops.long_conv``, for ``supports(L)``."""
    return MonarchFFTConv.apply(u, k_fwd, k_rev, skip)
