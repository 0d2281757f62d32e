"""Kernel-backed drop-ins for the models' parameter-free compute modules (what ``accelerate`` swaps in).

Each one subclasses the reference module it replaces and runs its kernel where the kernel applies (CUDA tensors,
Triton importable, shapes and dtypes the kernel covers), else the reference forward: a converted model runs on CPU
and gives exactly the unconverted model's outputs there. The kernel files are imported only once a CUDA tensor
shows up: importing triton fixes its interpreter mode for the process, and the CPU path should not pay for it.

    reference (model)                          kernel-backed              kernel
    monarch.blockdiag.BlockDiagonalProduct     BlockDiagonalKernel        block_diagonal.block_diagonal_matmul
    monarch.monarch_linear.MonarchProduct      MonarchKernel              monarch_matmul.monarch_matmul
    models.monarch_mlp.GeluGLU                 FusedGeluGLU               glu.gelu_glu
    models.monarch_mlp.MonarchGLU              RecomputingMonarchGLU      mlp_recompute (opt-in)
    models.sequence_mixer.MixerCore            LongConvKernelCore         ops.mixer_core's body, fused long convs
                                               FusedMixerCore             mixer_core.fused_mixer_core (whole core)
    torch.nn.LayerNorm (feeding a matmul)      FusedLayerNorm             layer_norm.layer_norm (output in bf16)

On CPU the kernels can still be run through Triton's interpreter; the tests force ``_on_gpu`` to do so.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from m2dist.models.monarch_mlp import GeluGLU, MonarchGLU
from m2dist.models.sequence_mixer import MixerCore
from m2dist.monarch.blockdiag import BlockDiagonalLinear, BlockDiagonalProduct
from m2dist.monarch.monarch_linear import MonarchProduct
from m2dist.ops.long_conv import check_long_conv_inputs, long_conv
from m2dist.ops.mixer_core import check_mixer_core_inputs


def _on_gpu(t: torch.Tensor) -> bool:
    """A compiled kernel can take this tensor: on a CUDA device, with Triton installed."""
    if not t.is_cuda:
        return False
    from m2dist.kernels._triton import HAVE_TRITON

    return HAVE_TRITON


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


class BlockDiagonalKernel(BlockDiagonalProduct):
    """x (..., nb*p) -> (..., nb*q) with weight (nb, q, p) on the block-diagonal kernel (a persistent Triton kernel
    or cuBLAS, timed per shape); dtypes and autocast: ``_kernel_inputs``."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        nb, _, p = weight.shape
        if _on_gpu(x) and x.shape[-1] == nb * p:
            args = _kernel_inputs(x, (weight,), bias)
            if args is not None:
                from m2dist.kernels.block_diagonal import block_diagonal_matmul

                return block_diagonal_matmul(*args)
        return super().forward(x, weight, bias)


class MonarchKernel(MonarchProduct):
    """The order-2 Monarch product on the permutation-fused kernels (``m2dist.kernels.monarch_matmul``).
    ``choice`` ("auto" or "kernel", set by ``accelerate``): "auto" runs the kernels only at shapes where they timed
    faster than the einsum path (``monarch_matmul.kernels_win``). Dtypes and autocast: ``_kernel_inputs``."""

    choice = "auto"

    def forward(self, x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        nb, r, p = weight1.shape
        if _on_gpu(x) and x.shape[-1] == nb * p and weight2.shape[0] == nb and weight2.shape[2] == r:
            args = _kernel_inputs(x, (weight1, weight2), bias)
            if args is not None:
                from m2dist.kernels.monarch_matmul import kernels_win, monarch_matmul

                if self.choice == "kernel" or kernels_win(*args):
                    return monarch_matmul(*args)
        return super().forward(x, weight1, weight2, bias)


class FusedGeluGLU(GeluGLU):
    """``gelu(g[..., :I]) * g[..., I:]`` in one Triton pass each way (``m2dist.kernels.glu``); float64 and odd
    widths take the reference."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        if _on_gpu(g) and g.shape[-1] % 2 == 0 and g.dtype != torch.float64:
            from m2dist.kernels.glu import gelu_glu

            return gelu_glu(g)
        return super().forward(g)


class RecomputingMonarchGLU(MonarchGLU):
    """The block-diagonal Monarch MLP whose backward recomputes its intermediates instead of keeping them
    (``m2dist.kernels.mlp_recompute``). ``recompute`` (set by ``accelerate``): "glu" keeps the GLU's input and
    recomputes its output, a (tokens, I) activation less per layer; "mlp" keeps only the MLP's input, 3I less, for
    the first product again in the backward. Where the ops do not apply (no GPU, active dropout,
    ``mlp_type="monarch"``, dtypes of ``_kernel_inputs``) it runs as an unconverted MLP would: its submodules, with
    whatever kernels ``accelerate`` put in them."""

    recompute = "glu"

    def _applies(self, x: torch.Tensor) -> bool:
        return (_on_gpu(x) and isinstance(self.gated_proj, BlockDiagonalLinear) and self.gated_proj.bias is None
                and isinstance(self.out_proj, BlockDiagonalLinear) and isinstance(self.act, GeluGLU)
                and not (self.training and self.dropout.p > 0) and x.dtype != torch.float64)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w1, out = self.gated_proj.weight, self.out_proj
        if self.recompute == "mlp" and self._applies(h) and h.shape[-1] == w1.shape[0] * w1.shape[2]:
            args = _kernel_inputs(h, (w1, out.weight), out.bias)
            if args is not None:
                from m2dist.kernels.mlp_recompute import monarch_glu_mlp

                return monarch_glu_mlp(*args)
        g = self.gated_proj(h)
        if self._applies(g) and g.shape[-1] == 2 * out.weight.shape[0] * out.weight.shape[2]:
            args = _kernel_inputs(g, (out.weight,), out.bias)
            if args is not None:
                from m2dist.kernels.mlp_recompute import gelu_glu_block_diagonal

                return gelu_glu_block_diagonal(*args)
        return out(self.dropout(self.act(g)))


def kernel_long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor] = None,
                     skip: Optional[torch.Tensor] = None, kernel: str = "fft") -> torch.Tensor:
    """``m2dist.ops.long_conv`` on the cuFFT kernel (``fft_conv``), or on the Monarch-FFT one (``kernel="monarch"``,
    where it supports the length) for CUDA tensors; the reference elsewhere."""
    if not _on_gpu(u):
        return long_conv(u, k_fwd, k_rev, skip)
    check_long_conv_inputs(u, k_fwd, k_rev)
    if kernel == "monarch":
        from m2dist.kernels import monarch_fft_conv

        if monarch_fft_conv.supports(u.shape[-1]):
            return monarch_fft_conv.monarch_long_conv(u, k_fwd, k_rev, skip)
    from m2dist.kernels.fft_conv import fft_long_conv

    return fft_long_conv(u, k_fwd, k_rev, skip)


class LongConvKernelCore(MixerCore):
    """The mixer core's reference body (``m2dist.ops.mixer_core``) with its long convolutions on a kernel
    (``kernel_long_conv``; ``long_conv_kernel`` "fft" or "monarch", set by ``accelerate``): the per-op-kernel path."""

    long_conv_kernel = "fft"

    def long_conv(self, u, k_fwd, k_rev=None, skip=None):
        # MixerCore.forward runs mixer_core with this; so does a core that context parallelism replaced.
        return kernel_long_conv(u, k_fwd, k_rev, skip, kernel=self.long_conv_kernel)


class FusedMixerCore(LongConvKernelCore):
    """The whole mixer core as fused Triton passes around cuFFT (``m2dist.kernels.mixer_core``) where
    ``mixer_core.supports`` covers the shapes and dtypes (a 3-tap short conv with a bias, no float64); elsewhere
    the per-op-kernel path (``LongConvKernelCore``)."""

    def forward(self, z: torch.Tensor, u: Optional[torch.Tensor], conv_weight: torch.Tensor,
                conv_bias: torch.Tensor, filt, residual_filt=None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_mixer_core_inputs(u, residual_filt)
        if _on_gpu(z) and conv_bias is not None:
            from m2dist.kernels.mixer_core import fused_mixer_core, supports

            if supports(z, u, conv_weight):
                k2f, k2r, d2 = residual_filt if residual_filt is not None else (None, None, None)
                return fused_mixer_core(z, u, conv_weight, conv_bias, *filt, k2f, k2r, d2, keep)
        return super().forward(z, u, conv_weight, conv_bias, filt, residual_filt, keep)


class FusedLayerNorm(nn.LayerNorm):
    """A LayerNorm whose output only feeds matmuls (``accelerate`` picks which): under CUDA autocast it writes its
    output in the autocast dtype, the dtype the next matmul casts it to anyway, in one pass each way
    (``m2dist.kernels.layer_norm``); with bf16/fp16 inputs outside autocast, in the input's dtype. Statistics are
    fp32 either way, as ``F.layer_norm`` under autocast. Elsewhere (CPU, fp32 without autocast, no affine
    parameters, a normalized shape over more than the last dimension) the reference forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_on_gpu(x) and self.weight is not None and self.bias is not None
                and len(self.normalized_shape) == 1):
            if torch.is_autocast_enabled("cuda"):
                out_dtype = torch.get_autocast_dtype("cuda")
            else:
                out_dtype = x.dtype
            if out_dtype in (torch.bfloat16, torch.float16):
                from m2dist.kernels.layer_norm import layer_norm

                return layer_norm(x, self.weight, self.bias, self.eps, out_dtype)
        return super().forward(x)
