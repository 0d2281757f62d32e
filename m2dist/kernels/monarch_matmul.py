"""Order-2 Monarch matmul (``m2dist.monarch.MonarchLinear``), forward and all gradients, permutations fused.

With ``weight1`` (nb, r, p), ``weight2`` (nb, s, r) and ``x`` (M, nb*p) the layer is (its docstring has the index
maps): ``z = BD(weight1) x``; block j of the second factor reads ``z[m, i*nb + j]`` (i < r); its output ``w[m, j, i]``
(i < s) lands at ``out[m, i*nb + j]``. Both permutations are the same strided view of a row-major (M, a*nb) matrix,

    t~[j, m, i] = t[m, i*nb + j]      strides (1, a*nb, nb): the block index j is the unit-stride dimension,

so every product below is one strided batched matmul (block_diagonal._launch) reading and writing these views in
place; the einsum path instead materialises each permutation as a transpose copy of an activation.

* factor 1        ``z = x @ BD(W1)^T``                   the block-diagonal product (block_diagonal._apply)
* factor 2        ``out~_j = z~_j @ W2_j^T (+ bias~_j)``  A = z~, C = out~: no unit stride inside the matrix
* grad of z       ``dz~_j = dout~_j @ W2_j``             A = dout~, C = dz~
* grad of W2      ``dW2_j = dout~_j^T @ z~_j``           a reduction over all M rows (block_diagonal._row_reduction)
* grads of x, W1  the block-diagonal backward with dz

The z~/out~/dout~/dz~ views have no unit stride inside their matrices, which cuBLAS cannot take, so those three
products always run on the Triton kernel (its "none" layout); the factor-1 products keep the timed backend choice.
z is kept from the forward for the W2 gradient, as the einsum path's autograd keeps it. Whether the kernels or the
layer's einsum path run is timed per shape on the GPU (``kernels_win``; ``M2DIST_MONARCH`` overrides, read by
``m2dist.kernels.convert``).
"""
from __future__ import annotations

from typing import Optional

import torch

from m2dist.kernels.block_diagonal import _apply, _launch, _row_reduction, _weight_grad, cuda_ms


def _interleaved(t: torch.Tensor, nb: int) -> torch.Tensor:
    """(M, a*nb) row-major -> the (nb, M, a) view with ``[j, m, i] = t[m, i*nb + j]`` (no copy)."""
    return t.view(t.shape[0], -1, nb).permute(2, 0, 1)


def _second_factor(z: torch.Tensor, weight2: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """out (M, nb*s) with ``out[m, i*nb + j] = (z~_j @ W2_j^T)[m, i] + bias[i*nb + j]``."""
    nb, s, _ = weight2.shape
    out = z.new_empty(z.shape[0], nb * s)
    # The kernel adds bias[j*s + i] to block j's column i: hand it the bias in that order (nb*s values, a weight).
    bias_by_block = None if bias is None else bias.view(s, nb).t().reshape(-1)
    _launch(_interleaved(z, nb), weight2.transpose(1, 2), _interleaved(out, nb).unsqueeze(0), bias_by_block)
    return out


# Custom ops with autograd, as block_diagonal's, so torch.compile keeps them opaque (and the timed backend choice).
@torch.library.custom_op("m2dist::monarch", mutates_args=())
def _monarch_op(x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, nb*p) row-major -> (out (M, nb*s), z (M, nb*r)); z, the first factor's output, is saved for the
    backward (not differentiable). One dtype for x and the weights."""
    z = _apply(x, weight1, None)
    return _second_factor(z, weight2, bias), z


@_monarch_op.register_fake
def _(x, weight1, weight2, bias):
    M = x.shape[0]
    return x.new_empty(M, weight2.shape[0] * weight2.shape[1]), x.new_empty(M, weight1.shape[0] * weight1.shape[1])


@torch.library.custom_op("m2dist::monarch_backward", mutates_args=())
def _monarch_backward_op(gout: torch.Tensor, x: torch.Tensor, z: torch.Tensor, weight1: torch.Tensor,
                         weight2: torch.Tensor, bias: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """[dx, dweight1, dweight2, dbias (empty without a bias)]."""
    nb = weight2.shape[0]
    gout = gout.contiguous()  # no-op for the usual row-major gradient; the interleaved views assume that layout
    gout_blocks = _interleaved(gout, nb)
    gz = torch.empty_like(z)
    _launch(gout_blocks, weight2, _interleaved(gz, nb).unsqueeze(0))
    gw2 = _row_reduction(gout_blocks.transpose(1, 2), _interleaved(z, nb)).to(weight2.dtype)
    gx = _apply(gz, weight1.transpose(1, 2), None)
    gw1 = _weight_grad(gz, x, nb).to(weight1.dtype)
    gb = gout.sum(0, dtype=torch.float32).to(bias.dtype) if bias is not None else gout.new_empty(0)
    return [gx, gw1, gw2, gb]


@_monarch_backward_op.register_fake
def _(gout, x, z, weight1, weight2, bias):
    # Contiguous, as the real op's outputs
    return [x.new_empty(x.shape), weight1.new_empty(weight1.shape), weight2.new_empty(weight2.shape),
            bias.new_empty(bias.shape) if bias is not None else gout.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, weight1, weight2, bias = inputs
    z = output[1]
    ctx.mark_non_differentiable(z)
    ctx.save_for_backward(x, z, weight1, weight2, bias)


def _backward(ctx, gout, _gz):
    x, z, weight1, weight2, bias = ctx.saved_tensors
    gx, gw1, gw2, gb = _monarch_backward_op(gout, x, z, weight1, weight2, bias)
    return gx, gw1, gw2, (gb if bias is not None else None)


_monarch_op.register_autograd(_backward, setup_context=_setup_context)


def monarch_matmul(x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``MonarchLinear`` applied to ``x`` (..., nb*p) -> (..., nb*s), with weight1 (nb, r, p), weight2 (nb, s, r)
    and bias (nb*s,) or None as the layer holds them. Inputs and weights share one dtype (cast before)."""
    nb, r, p = weight1.shape
    if weight2.shape[0] != nb or weight2.shape[2] != r or x.shape[-1] != nb * p:
        raise ValueError(f"monarch_matmul: x {tuple(x.shape)}, weight1 {tuple(weight1.shape)} and weight2 "
                         f"{tuple(weight2.shape)} do not chain")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1 or x2.stride(0) != x2.shape[1]:
        x2 = x2.contiguous()
    out, _ = _monarch_op(x2, weight1, weight2, bias)
    return out.view(*lead, out.shape[-1])


_CHOICE: dict = {}  # (rows, weight shapes, dtype, bias?) -> whether the kernels beat the einsum path


def kernels_win(x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> bool:
    """Whether the kernels beat the layer's einsum path at this shape (``M2DIST_MONARCH=auto``, the default; the
    choice is made in ``m2dist.kernels.convert``).

    Why time: the permuted products read and write their interleaved operands without 16-byte vectors
    (stride nb), which may cost more than the einsum path's transpose copies; which wins depends on the shape and
    the GPU. So the first eager call at a shape times one training step (forward and backward) of each on CUDA
    events and keeps the faster, as ``block_diagonal._launch`` does for its backends. Under torch.compile's tracing
    there is nothing to time: a shape timed before keeps its choice, an untimed one takes the kernels.
    """
    key = (x.numel() // x.shape[-1], tuple(weight1.shape), tuple(weight2.shape), x.dtype, bias is None)
    if key not in _CHOICE:
        if torch.compiler.is_compiling():
            return True
        from m2dist.monarch.monarch_linear import monarch_einsum

        _CHOICE[key] = _step_ms(monarch_matmul, x, weight1, weight2, bias) <= _step_ms(
            monarch_einsum, x, weight1, weight2, bias)
    return _CHOICE[key]


def _step_ms(fn, x, weight1, weight2, bias) -> float:
    """Milliseconds of ``fn``'s forward and backward on detached copies (``block_diagonal.cuda_ms``)."""
    leaves = [t.detach().requires_grad_() for t in (x, weight1, weight2)]
    b = None if bias is None else bias.detach().requires_grad_()

    def step():
        out = fn(*leaves, b)
        out.backward(torch.ones_like(out))

    with torch.enable_grad(), torch.autocast("cuda", enabled=False):
        return cuda_ms(step)
