"""GELU-gated linear unit ``a = gelu(g[..., :I]) * g[..., I:]`` in one pass each way (custom ops with autograd).

Why: in eager PyTorch the GLU between the Monarch MLP's two block-diagonal layers is a split, a GELU and a
product forward and four kernels plus a concatenation backward, each a full pass over (tokens, I) or (tokens, 2I)
activations, the largest of the layer. Here forward reads g once and writes a; backward reads g and da once and
writes dg in g's layout (no concatenation). GELU is the exact (erf) form, as ``F.gelu``'s default.
Registered as custom ops, so torch.compile keeps the layer in one graph around them.
"""
from __future__ import annotations

import torch

from m2dist.kernels._triton import HAVE_TRITON, interpreting, tl, triton

if HAVE_TRITON:

    @triton.jit
    def _gelu_parts(x):
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
        return x * cdf, cdf + x * pdf  # gelu(x), gelu'(x)

    @triton.jit
    def _glu_fwd(g_ptr, a_ptr, I, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < I
        gate = tl.load(g_ptr + row * 2 * I + cols, mask=ok, other=0.0).to(tl.float32)
        value = tl.load(g_ptr + row * 2 * I + I + cols, mask=ok, other=0.0).to(tl.float32)
        act, _ = _gelu_parts(gate)
        tl.store(a_ptr + row * I + cols, (act * value).to(a_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _glu_bwd(g_ptr, da_ptr, dg_ptr, I, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < I
        gate = tl.load(g_ptr + row * 2 * I + cols, mask=ok, other=0.0).to(tl.float32)
        value = tl.load(g_ptr + row * 2 * I + I + cols, mask=ok, other=0.0).to(tl.float32)
        da = tl.load(da_ptr + row * I + cols, mask=ok, other=0.0).to(tl.float32)
        act, dact = _gelu_parts(gate)
        ty = dg_ptr.dtype.element_ty
        tl.store(dg_ptr + row * 2 * I + cols, (da * value * dact).to(ty), mask=ok)
        tl.store(dg_ptr + row * 2 * I + I + cols, (da * act).to(ty), mask=ok)


def _launch(kernel, rows: int, I: int, *args):
    block = 64 if interpreting() else min(1024, triton.next_power_of_2(I))
    kernel[(rows, triton.cdiv(I, block))](*args, I, BLOCK=block, num_warps=4)


# Custom ops (opaque to torch.compile, no graph break), wired with register_autograd.
@torch.library.custom_op("m2dist::gelu_glu", mutates_args=())
def _glu_op(g: torch.Tensor) -> torch.Tensor:
    g = g.contiguous()
    I = g.shape[-1] // 2
    a = torch.empty(*g.shape[:-1], I, device=g.device, dtype=g.dtype)
    _launch(_glu_fwd, g.numel() // (2 * I), I, g, a)
    return a


@_glu_op.register_fake
def _(g):
    return g.new_empty(*g.shape[:-1], g.shape[-1] // 2)


@torch.library.custom_op("m2dist::gelu_glu_backward", mutates_args=())
def _glu_backward_op(g: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    g = g.contiguous()
    I = g.shape[-1] // 2
    dg = torch.empty_like(g)
    _launch(_glu_bwd, g.numel() // (2 * I), I, g, da.contiguous(), dg)
    return dg


@_glu_backward_op.register_fake
def _(g, da):
    return g.new_empty(g.shape)  # contiguous, as the real op's output


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, da):
    (g,) = ctx.saved_tensors
    return _glu_backward_op(g, da)


_glu_op.register_autograd(_backward, setup_context=_setup_context)


def gelu_glu(g: torch.Tensor) -> torch.Tensor:
    """``gelu(g[..., :I]) * g[..., I:]`` for g (..., 2I); output in g's dtype."""
    if g.shape[-1] % 2:
        raise ValueError(f"gelu_glu: the last dimension must be even (gate | value), got {g.shape[-1]}")
    return _glu_op(g)
