"""The block-diagonal Monarch MLP with its intermediates recomputed in the backward instead of kept (custom ops with
autograd). Unfused, the backward keeps the GLU's input g (tokens, 2I) and output a (tokens, I), 12 (tokens, H)
activations per layer at I = 4H, the largest share of an M2 layer's memory (``benchmarks/activation_memory.py``).

* ``gelu_glu_block_diagonal(g, w2, b2)``: the MLP's second half, ``BD(w2) gelu_glu(g) + b2``, keeps g and not a; the
  backward recomputes a (one elementwise pass over g).
* ``monarch_glu_mlp(h, w1, w2, b2)``: the whole MLP, ``BD(w2) gelu_glu(BD(w1) h) + b2``, keeps only its input h;
  the backward recomputes g (the first block-diagonal product again: 2/3 of the MLP's forward FLOPs, +22% of its
  forward and backward) and a.

Both run the kernels of ``glu`` and ``block_diagonal`` in the unfused order, so outputs and gradients are those of
the unfused MLP, bit for bit on the same device.
"""
from __future__ import annotations

from typing import Optional

import torch

from m2dist.kernels.block_diagonal import _apply, _weight_grad
from m2dist.kernels.glu import _glu_backward_op, _glu_op


def _bias_grad(gy: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return gy.sum(0, dtype=torch.float32).to(bias.dtype) if bias is not None else gy.new_empty(0)


def _second_half_backward(gy, g, w2, b2):
    """(dg, dw2, db2) of ``BD(w2) gelu_glu(g) + b2``, recomputing the GLU's output."""
    a = _glu_op(g)
    gw2 = _weight_grad(gy, a, w2.shape[0]).to(w2.dtype)
    del a
    dg = _glu_backward_op(g, _apply(gy, w2.transpose(1, 2), None))
    return dg, gw2, _bias_grad(gy, b2)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # the inputs only: what each backward needs besides them it recomputes


# ------------------------------------------------------------------------------------- GLU + second product
@torch.library.custom_op("m2dist::gelu_glu_block_diagonal", mutates_args=())
def _glu_bd_op(g: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """g (M, 2I), weight (nb, q, I/nb), bias (nb*q,) or None -> (M, nb*q); one dtype for all."""
    return _apply(_glu_op(g), weight, bias)


@_glu_bd_op.register_fake
def _(g, weight, bias):
    return g.new_empty(g.shape[0], weight.shape[0] * weight.shape[1])


@torch.library.custom_op("m2dist::gelu_glu_block_diagonal_backward", mutates_args=())
def _glu_bd_backward_op(gy: torch.Tensor, g: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """[dg, dweight, dbias (empty without a bias)]."""
    return list(_second_half_backward(gy.contiguous(), g, weight, bias))


@_glu_bd_backward_op.register_fake
def _(gy, g, weight, bias):
    return [g.new_empty(g.shape), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape) if bias is not None else gy.new_empty(0)]


def _glu_bd_backward(ctx, gy):
    g, weight, bias = ctx.saved_tensors
    dg, gw, gb = _glu_bd_backward_op(gy, g, weight, bias)
    return dg, gw, (gb if bias is not None else None)


_glu_bd_op.register_autograd(_glu_bd_backward, setup_context=_save_inputs)


# ---------------------------------------------------------------------------------------------- whole MLP
@torch.library.custom_op("m2dist::monarch_glu_mlp", mutates_args=())
def _mlp_op(h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, b2: Optional[torch.Tensor]) -> torch.Tensor:
    """h (M, H), w1 (nb, 2I/nb, H/nb), w2 (nb, q, I/nb), b2 (nb*q,) or None -> (M, nb*q); one dtype for all."""
    return _apply(_glu_op(_apply(h, w1, None)), w2, b2)


@_mlp_op.register_fake
def _(h, w1, w2, b2):
    return h.new_empty(h.shape[0], w2.shape[0] * w2.shape[1])


@torch.library.custom_op("m2dist::monarch_glu_mlp_backward", mutates_args=())
def _mlp_backward_op(gy: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                     b2: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """[dh, dw1, dw2, db2 (empty without a bias)]."""
    g = _apply(h, w1, None)  # recomputed: the forward kept only h
    dg, gw2, gb2 = _second_half_backward(gy.contiguous(), g, w2, b2)
    del g
    gw1 = _weight_grad(dg, h, w1.shape[0]).to(w1.dtype)
    return [_apply(dg, w1.transpose(1, 2), None), gw1, gw2, gb2]


@_mlp_backward_op.register_fake
def _(gy, h, w1, w2, b2):
    return [h.new_empty(h.shape), w1.new_empty(w1.shape), w2.new_empty(w2.shape),
            b2.new_empty(b2.shape) if b2 is not None else gy.new_empty(0)]


def _mlp_backward(ctx, gy):
    h, w1, w2, b2 = ctx.saved_tensors
    dh, gw1, gw2, gb2 = _mlp_backward_op(gy, h, w1, w2, b2)
    return dh, gw1, gw2, (gb2 if b2 is not None else None)


_mlp_op.register_autograd(_mlp_backward, setup_context=_save_inputs)


# ------------------------------------------------------------------------------------------------ entries
def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def gelu_glu_block_diagonal(g: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``block_diagonal_matmul(gelu_glu(g), weight, bias)`` for g (..., 2I), keeping only g for the backward."""
    nb, _, p = weight.shape
    if g.shape[-1] != 2 * nb * p:
        raise ValueError(f"gelu_glu_block_diagonal: g's last dimension {g.shape[-1]} is not 2 x {nb} x {p}")
    y = _glu_bd_op(_rows(g), weight, bias)
    return y.view(*g.shape[:-1], y.shape[-1])


def monarch_glu_mlp(h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                    b2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The MLP ``BD(w2) gelu_glu(BD(w1) h) + b2`` for h (..., H), keeping only h for the backward."""
    nb1, q1, p1 = w1.shape
    nb2, _, p2 = w2.shape
    if h.shape[-1] != nb1 * p1 or nb1 * q1 != 2 * nb2 * p2:
        raise ValueError(f"monarch_glu_mlp: h (..., {h.shape[-1]}), w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} "
                         f"do not chain as H -> 2I -> out")
    y = _mlp_op(_rows(h), w1, w2, b2)
    return y.view(*h.shape[:-1], y.shape[-1])
