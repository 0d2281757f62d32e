"""The Monarch MLP's second half, ``y = BD(w) gelu_glu(g) + b``, saving g and not the GLU's output (custom ops with
autograd).

Why: unfused, the backward keeps both the GLU's input g (tokens, 2I) for the GLU's gradient and its output
a (tokens, I) for the block-diagonal layer's weight gradient. a is one elementwise pass over g, so the backward
recomputes it instead: per M2 layer that is I/H = 4 of the ~30 (tokens, H) activations the layer keeps, for one
extra read of g and write of a in the backward. Numerically the same ops as ``glu.gelu_glu`` then
``block_diagonal.block_diagonal_matmul``.
"""
from __future__ import annotations

from typing import Optional

import torch

from m2dist.kernels.block_diagonal import _apply, _weight_grad
from m2dist.kernels.glu import _glu_backward_op, _glu_op


@torch.library.custom_op("m2dist::gelu_glu_block_diagonal", mutates_args=())
def _op(g: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """g (M, 2I), weight (nb, q, I/nb), bias (nb*q,) or None -> (M, nb*q); one dtype for all."""
    return _apply(_glu_op(g), weight, bias)


@_op.register_fake
def _(g, weight, bias):
    return g.new_empty(g.shape[0], weight.shape[0] * weight.shape[1])


@torch.library.custom_op("m2dist::gelu_glu_block_diagonal_backward", mutates_args=())
def _backward_op(gy: torch.Tensor, g: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """[dg, dweight, dbias (empty without a bias)]."""
    gy = gy.contiguous()
    a = _glu_op(g)  # recomputed: the forward did not keep it
    gw = _weight_grad(gy, a, weight.shape[0]).to(weight.dtype)
    del a
    dg = _glu_backward_op(g, _apply(gy, weight.transpose(1, 2), None))
    gb = gy.sum(0, dtype=torch.float32).to(bias.dtype) if bias is not None else gy.new_empty(0)
    return [dg, gw, gb]


@_backward_op.register_fake
def _(gy, g, weight, bias):
    return [g.new_empty(g.shape), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape) if bias is not None else gy.new_empty(0)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, gy):
    g, weight, bias = ctx.saved_tensors
    dg, gw, gb = _backward_op(gy, g, weight, bias)
    return dg, gw, (gb if bias is not None else None)


_op.register_autograd(_backward, setup_context=_setup_context)


def gelu_glu_block_diagonal(g: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``block_diagonal_matmul(gelu_glu(g), weight, bias)`` for g (..., 2I), keeping only g for the backward."""
    nb, _, p = weight.shape
    if g.shape[-1] != 2 * nb * p:
        raise ValueError(f"gelu_glu_block_diagonal: g's last dimension {g.shape[-1]} is not 2 x {nb} x {p}")
    lead = g.shape[:-1]
    y = _op(g.reshape(-1, g.shape[-1]).contiguous(), weight, bias)
    return y.view(*lead, y.shape[-1])
