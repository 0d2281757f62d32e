"""Long convolution through cuFFT with the pointwise work fused, forward and backward (one autograd.Function).

Computes exactly what ``m2dist.ops.long_conv(u, k_fwd, k_rev, skip)`` computes: u (B, H, L), k (H, L), skip (H,);
causal when ``k_rev`` is None, bidirectional otherwise; fp32 inside, output in u's dtype.

One formulation covers both directions: a length-n kernel (n >= 2L, FFT-friendly)
``kappa = [k_fwd, 0, ..., 0, flip(k_rev)]`` (the reverse half starts at lag 1, so the diagonal counts once) and
a circular convolution of size n of the zero-padded input. Nothing wraps around because |t - s| < L <= n - L.

Backward in the frequency domain, with G = rfft(dy), U = rfft(u), K = rfft(kappa):
  du     = irfft(G * conj(K))[:L] + skip * dy          (a correlation: the same FFT machinery)
  dkappa = irfft(sum_b G * conj(U))                      -> dk_fwd = dkappa[:L], dk_rev = flip(dkappa[n-L:])
  dskip  = sum_{b,t} dy * u                              (fused into the du kernel with one atomic per program)

Where the bytes go (per element of u, fp32 complex spectra): the reference (``fftconv_ref``) makes ~8 separate
passes (cast, pad, rfft, multiply, irfft, slice, skip multiply-add, cast). Here the kernel's FFT is taken once
per call on H rows (not B*H), the spectral product is one in-place multiply, and the crop + skip + cast (and in
backward the skip gradient) are one Triton pass that reads only the first L of the n outputs. cuFFT's own
passes remain: this path is bounded by them, not by the pointwise work (see benchmarks/NOTES.md).
"""
from __future__ import annotations

from typing import Optional

import torch

from m2dist.kernels._triton import HAVE_TRITON, interpreting, needs_upcast, tl, triton

if HAVE_TRITON:

    @triton.jit
    def _crop_skip_kernel(
        y_ptr, v_ptr, skip_ptr, out_ptr, w_ptr, dskip_ptr,
        H, L, s_y,
        HAS_SKIP: tl.constexpr, SKIP_GRAD: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """out[r, :L] = y[r, :L] + skip[r % H] * v[r, :L]; optionally dskip[r % H] += sum(v[r] * w[r]).

        One program per (row, BLOCK columns): rows are contiguous, so every load and store is a coalesced
        streaming access; y is the fp32 irfft output whose rows are n >= 2L long, of which only [0, L) is read.
        """
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < L
        h = row % H
        y = tl.load(y_ptr + row * s_y + offs, mask=ok, other=0.0)
        if HAS_SKIP or SKIP_GRAD:
            v = tl.load(v_ptr + row * L + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_SKIP:
            y += tl.load(skip_ptr + h).to(tl.float32) * v
        tl.store(out_ptr + row * L + offs, y.to(out_ptr.dtype.element_ty), mask=ok)
        if SKIP_GRAD:
            w = tl.load(w_ptr + row * L + offs, mask=ok, other=0.0).to(tl.float32)
            tl.atomic_add(dskip_ptr + h, tl.sum(v * w, axis=0))


def _crop_skip(y: torch.Tensor, v: torch.Tensor, skip: Optional[torch.Tensor], out_dtype: torch.dtype,
               skip_grad_with: Optional[torch.Tensor] = None):
    """Launch `_crop_skip_kernel`. y (B, H, n) fp32; v (B, H, L). Returns out (and dskip when asked)."""
    B, H, L = v.shape
    out = torch.empty(B, H, L, device=v.device, dtype=out_dtype)
    dskip = torch.zeros(H, device=v.device, dtype=torch.float32) if skip_grad_with is not None else None
    block = 64 if interpreting() else min(2048, triton.next_power_of_2(L))
    grid = (B * H, triton.cdiv(L, block))
    _crop_skip_kernel[grid](
        y, v, skip if skip is not None else y, out,
        skip_grad_with if skip_grad_with is not None else v, dskip if dskip is not None else y,
        H, L, y.stride(1),
        HAS_SKIP=skip is not None, SKIP_GRAD=skip_grad_with is not None,
        UPCAST=needs_upcast(v), BLOCK=block,
        num_warps=4,
    )
    return (out, dskip) if skip_grad_with is not None else out


def fft_size(L: int) -> int:
    """Smallest even n >= 2L whose prime factors are 2, 3, 5 (cuFFT's fast radices). Even, so that a real FFT of
    size n can run as a complex FFT of size n/2 (``m2dist.kernels.mixer_core``)."""
    half = L
    while True:
        m = half
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return 2 * half
        half += 1


def build_kappa(k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """The length-n kernel [k_fwd, 0.., flip(k_rev)] (H, n), fp32: one circular kernel for both directions."""
    H, L = k_fwd.shape
    kappa = torch.zeros(H, n, device=k_fwd.device, dtype=torch.float32)
    kappa[:, :L] = k_fwd
    if k_rev is not None:
        kappa[:, n - L:] = k_rev.flip(-1)
    return kappa


def _kernel_spectrum(k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """rfft of `build_kappa` (H, n//2+1), fp32 complex."""
    return torch.fft.rfft(build_kappa(k_fwd.float(), None if k_rev is None else k_rev.float(), n), n=n)


def split_kappa(kappa: torch.Tensor, length: int, with_rev: bool):
    """The inverse of `build_kappa`: (k_fwd, k_rev or None), each (H, length), of a length-n kernel (or its gradient)."""
    n = kappa.shape[-1]
    return kappa[:, :length], (kappa[:, n - length:].flip(-1) if with_rev else None)


def filter_grads(u: torch.Tensor, G: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor], n: int,
                 need_fwd: bool, need_rev: bool):
    """(dk_fwd, dk_rev) from dkappa = irfft(sum_b G * conj(rfft(u))), with G = rfft(dy, n). Shared by every
    long-conv kernel: the filter gradient is a reduction over the batch, cheapest in the frequency domain."""
    if not (need_fwd or (need_rev and k_rev is not None)):
        return None, None
    L = u.shape[-1]
    U = torch.fft.rfft(u.float(), n=n)
    gkappa = torch.fft.irfft(U.conj_physical_().mul_(G).sum(0), n=n)  # (H, n)
    del U
    gkf, gkr = split_kappa(gkappa, L, need_rev and k_rev is not None)
    return (gkf.to(k_fwd.dtype) if need_fwd else None), (None if gkr is None else gkr.to(k_rev.dtype))


class FFTLongConv(torch.autograd.Function):
    """long_conv(u, k_fwd, k_rev, skip) with the pointwise stages fused; see the module docstring."""

    @staticmethod
    def forward(ctx, u, k_fwd, k_rev, skip):
        u = u.contiguous()
        L = u.shape[-1]
        n = fft_size(L)
        with torch.autocast(u.device.type, enabled=False):
            K = _kernel_spectrum(k_fwd, k_rev, n)
            spec = torch.fft.rfft(u.float(), n=n)
            spec.mul_(K)
            y = torch.fft.irfft(spec, n=n)
            del spec
            out = _crop_skip(y, u, skip, u.dtype)
        ctx.save_for_backward(u, k_fwd, k_rev, skip)
        ctx.n = n
        return out

    @staticmethod
    def backward(ctx, gy):
        u, k_fwd, k_rev, skip = ctx.saved_tensors
        n = ctx.n
        gy = gy.contiguous()
        gu = gskip = None
        with torch.autocast(u.device.type, enabled=False):
            G = torch.fft.rfft(gy.float(), n=n)
            gkf, gkr = filter_grads(u, G, k_fwd, k_rev, n, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
            if ctx.needs_input_grad[0] or (skip is not None and ctx.needs_input_grad[3]):
                K = _kernel_spectrum(k_fwd, k_rev, n)
                y = torch.fft.irfft(G.mul_(K.conj_physical_()), n=n)
                del G
                want_dskip = skip is not None and ctx.needs_input_grad[3]
                res = _crop_skip(y, gy, skip, u.dtype, skip_grad_with=u if want_dskip else None)
                gu, gskip = res if want_dskip else (res, None)
                if gskip is not None:
                    gskip = gskip.to(skip.dtype)
        return gu, gkf, gkr, gskip


def fft_long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor] = None,
                  skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The fused FFT long convolution; same contract as ``m2dist.ops.long_conv``."""
    return FFTLongConv.apply(u, k_fwd, k_rev, skip)
