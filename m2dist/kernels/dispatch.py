"""The one place that decides whether a reference op runs through a Triton kernel.

The reference modules call these first and use their own PyTorch path when they return None:

    # m2dist/ops/long_conv.py, first line of long_conv():
    y = dispatch.long_conv(u, k_fwd, k_rev, skip)
    if y is not None: return y
    # m2dist/monarch/ BlockDiagonalLinear.forward():
    y = dispatch.block_diagonal(x, self.weight, self.bias)
    if y is not None: return y
    # m2dist/monarch/ MonarchLinear.forward(): both factors and both permutations
    y = dispatch.monarch_linear(x, self.weight1, self.weight2, self.bias)
    if y is not None: return y
    # m2dist/models/monarch_mlp.py, MonarchGLU.forward() (when dropout is off):
    a = dispatch.gelu_glu(g)
    # m2dist/ops/mixer_core.py, first line of mixer_core(): the whole mixer core fused (it supersedes long_conv's)
    y = dispatch.mixer_core(z, u, conv_weight, conv_bias, filt, residual_filt, keep)

A kernel is used when the tensors are on a CUDA device, Triton imports, ``M2DIST_KERNELS`` is not ``0``, and the
shape is one the kernel covers; everything else (CPU, odd shapes, fp32 block-diagonal or Monarch outside autocast)
returns None. ``M2DIST_FUSED=0`` switches the layer-level fusions (mixer core, GLU) off and keeps the per-op kernels
(long conv, block-diagonal, Monarch; ``M2DIST_MONARCH=auto|kernel|einsum`` picks the latter's path, auto by timing).
``M2DIST_LONGCONV=monarch`` opts into the Monarch-FFT long conv
(slower than the cuFFT path in its first GPU measurement, NOTES.md attempt 10; fft otherwise).
On CPU the kernels can still be called directly through the interpreter, which is how the tests run them.
"""
from __future__ import annotations

import os
from typing import Optional

import torch



def _on_gpu(t: torch.Tensor) -> bool:
    if not t.is_cuda:
        return False
    # Imported only once a CUDA tensor shows up: importing triton fixes its interpreter mode for the process, and the
    # CPU path should not pay for it.
    from m2dist.kernels._triton import kernels_enabled

    return kernels_enabled()


def _fused_on(t: torch.Tensor) -> bool:
    """The layer-level fusions (mixer core, GLU); ``M2DIST_FUSED=0`` keeps the per-op kernels only."""
    return _on_gpu(t) and os.environ.get("M2DIST_FUSED", "1") != "0"


def long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor] = None,
              skip: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The fused long convolution for CUDA tensors, else None (caller falls back to the reference)."""
    if not _on_gpu(u) or u.dim() != 3:
        return None
    if os.environ.get("M2DIST_LONGCONV", "fft") == "monarch":  # opt-in until it is measured on a GPU
        from m2dist.kernels import monarch_fft_conv

        if monarch_fft_conv.supports(u.shape[-1]):
            return monarch_fft_conv.monarch_long_conv(u, k_fwd, k_rev, skip)
    from m2dist.kernels.fft_conv import fft_long_conv

    return fft_long_conv(u, k_fwd, k_rev, skip)


def mixer_core(z: torch.Tensor, u: Optional[torch.Tensor], conv_weight: torch.Tensor, conv_bias: torch.Tensor,
               filt, residual_filt, keep: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The fused mixer core (``m2dist.kernels.m2_mixer``) for CUDA tensors and what ``m2_mixer.supports`` covers,
    else None."""
    if not _fused_on(z):
        return None
    from m2dist.kernels.m2_mixer import fused_m2_mixer, supports

    if conv_bias is None or not supports(z, u, conv_weight):
        return None
    k2f, k2r, d2 = residual_filt if residual_filt is not None else (None, None, None)
    return fused_m2_mixer(z, u, conv_weight, conv_bias, *filt, k2f, k2r, d2, keep)


def gelu_glu(g: torch.Tensor) -> Optional[torch.Tensor]:
    """``gelu(g[..., :I]) * g[..., I:]`` through the fused Triton kernel for CUDA tensors, else None."""
    if not _fused_on(g) or g.shape[-1] % 2 or g.dtype == torch.float64:
        return None
    from m2dist.kernels.glu import gelu_glu as fused

    return fused(g)


def _kernel_inputs(x: torch.Tensor, weights: tuple, bias: Optional[torch.Tensor]) -> Optional[tuple]:
    """``(x, *weights, bias)`` in the dtype a matmul kernel runs in, or None where it should not run.

    Follows autocast like the reference layers: inside an autocast region all are cast to the autocast dtype (the
    casts stay in the autograd graph, so fp32 master weights get fp32 gradients). Outside autocast, only bf16/fp16
    inputs with weights of the same dtype qualify: fp32 would run on tf32 tensor cores, less accurate than the
    reference.
    """
    if torch.is_autocast_enabled("cuda"):
        dt = torch.get_autocast_dtype("cuda")
        return (x.to(dt), *(w.to(dt) for w in weights), None if bias is None else bias.to(dt))
    if x.dtype not in (torch.bfloat16, torch.float16) or any(w.dtype != x.dtype for w in weights):
        return None
    return (x, *weights, bias)


def block_diagonal(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """x (..., nb*p) -> (..., nb*q) with weight (nb, q, p), on the Triton kernel; None when not applicable.
    Dtypes and autocast: ``_kernel_inputs``."""
    if not _on_gpu(x):
        return None
    nb, q, p = weight.shape
    if x.shape[-1] != nb * p:  # padded layer (nb does not divide in_features): reference path
        return None
    args = _kernel_inputs(x, (weight,), bias)
    if args is None:
        return None
    from m2dist.kernels.block_diagonal import block_diagonal_matmul

    return block_diagonal_matmul(*args)


def monarch_linear(x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                   bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``MonarchLinear`` on x (..., nb*p) with weight1 (nb, r, p), weight2 (nb, s, r), on the permutation-fused
    kernels (``m2dist.kernels.monarch_matmul``); None when not applicable or when the layer's einsum path timed
    faster at this shape (``monarch_matmul.kernels_win``). Dtypes and autocast: ``_kernel_inputs``."""
    if not _on_gpu(x):
        return None
    nb, r, p = weight1.shape
    if x.shape[-1] != nb * p or weight2.shape[0] != nb or weight2.shape[2] != r:
        return None
    args = _kernel_inputs(x, (weight1, weight2), bias)
    if args is None:
        return None
    from m2dist.kernels.monarch_matmul import kernels_win, monarch_matmul

    return monarch_matmul(*args) if kernels_win(*args) else None
