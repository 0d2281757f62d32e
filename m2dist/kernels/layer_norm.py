"""LayerNorm over the last dimension whose output goes straight to a matmul in a lower precision (custom ops with
autograd): ``y = ((x - mean) * rstd * weight + bias).to(out_dtype)``, statistics in fp32.

Why: under autocast PyTorch runs LayerNorm in fp32 and writes an fp32 output, which the next matmul then casts to
bf16 -- a second pass over the activations, forward, and another one backward (the bf16 gradient cast back to fp32
before the LayerNorm's backward). A pre-norm block does this twice per layer. The profile of a bare M2-GPT-360M
step (benchmarks/NOTES.md, attempt 19) puts ~38 ms in such casts and ~20 ms in LayerNorm backward. Here forward
reads x once and writes the bf16 output; backward reads x and the bf16 dy once and writes dx in x's dtype, with the
weight and bias gradients summed in registers over a run of rows per program (partial rows summed afterwards,
deterministic). The math is the fp32 LayerNorm's; only the output is rounded, where the cast would round it.
"""
from __future__ import annotations

import torch

from m2dist.kernels._triton import HAVE_TRITON, interpreting, tl, triton

if HAVE_TRITON:

    @triton.jit
    def _ln_fwd(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, N, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < N
        x = tl.load(x_ptr + row * N + cols, mask=ok, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(ok, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * N + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=ok)
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _ln_bwd(x_ptr, dy_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, part_ptr, M, N, ROWS, BLOCK: tl.constexpr):
        """dx for ROWS consecutive rows; their sums of dy * xhat and dy at part[program, 0 | 1, :]."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        ok = cols < N
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        db = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(ROWS):
            row = pid.to(tl.int64) * ROWS + i
            live = row < M
            m = ok & live
            x = tl.load(x_ptr + row * N + cols, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * N + cols, mask=m, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + row, mask=live, other=0.0)
            rstd = tl.load(rstd_ptr + row, mask=live, other=0.0)
            xhat = tl.where(m, (x - mean) * rstd, 0.0)
            wdy = w * dy
            c1 = tl.sum(xhat * wdy, axis=0) / N
            c2 = tl.sum(wdy, axis=0) / N
            dx = (wdy - (xhat * c1 + c2)) * rstd
            tl.store(dx_ptr + row * N + cols, dx.to(dx_ptr.dtype.element_ty), mask=m)
            dw += dy * xhat
            db += dy
        tl.store(part_ptr + pid * 2 * N + cols, dw, mask=ok)
        tl.store(part_ptr + pid * 2 * N + N + cols, db, mask=ok)


def _block(N: int) -> int:
    return triton.next_power_of_2(N)


def _warps(N: int) -> int:
    return 1 if interpreting() else min(16, max(1, _block(N) // 256))


def _rows_per_program(M: int) -> int:
    """Rows each backward program walks: enough programs to fill the GPU a few times over, few enough partial rows
    that their sum is small next to dx."""
    return 4 if interpreting() else max(1, triton.cdiv(M, 1024))


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@torch.library.custom_op("m2dist::layer_norm", mutates_args=())
def _layer_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, out_dtype: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y in ``out_dtype``, and mean, rstd (rows,) fp32 for backward."""
    x = x.contiguous()
    N = x.shape[-1]
    M = x.numel() // N
    y = torch.empty(x.shape, device=x.device, dtype=_DTYPES[out_dtype])
    mean = torch.empty(M, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _ln_fwd[(M,)](x, weight.contiguous(), bias.contiguous(), y, mean, rstd, N, eps, BLOCK=_block(N),
                  num_warps=_warps(N))
    return y, mean, rstd


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, out_dtype):
    M = x.numel() // x.shape[-1]
    return (torch.empty(x.shape, device=x.device, dtype=_DTYPES[out_dtype]),
            x.new_empty(M, dtype=torch.float32), x.new_empty(M, dtype=torch.float32))


@torch.library.custom_op("m2dist::layer_norm_backward", mutates_args=())
def _layer_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                            rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx (x's dtype and shape), dweight, dbias (weight's dtype)."""
    x, dy = x.contiguous(), dy.contiguous()
    N = x.shape[-1]
    M = x.numel() // N
    rows = _rows_per_program(M)
    programs = triton.cdiv(M, rows)
    dx = torch.empty_like(x)
    part = torch.empty(programs, 2, N, device=x.device, dtype=torch.float32)
    _ln_bwd[(programs,)](x, dy, weight.contiguous(), mean, rstd, dx, part, M, N, rows, BLOCK=_block(N),
                         num_warps=_warps(N))
    # Two sums, not views of one: a custom op's outputs may not alias each other.
    return dx, part[:, 0].sum(0).to(weight.dtype), part[:, 1].sum(0).to(weight.dtype)


@_layer_norm_backward_op.register_fake
def _(dy, x, weight, mean, rstd):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight), \
        torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, _bias, _eps, _out_dtype = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = _layer_norm_backward_op(dy, x, weight, mean, rstd)
    return dx, dweight, dbias, None, None


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               out_dtype: torch.dtype) -> torch.Tensor:
    """``F.layer_norm(x.float(), (N,), weight, bias, eps).to(out_dtype)`` over the last dimension N, in one pass
    each way; the gradient reaches x in x's dtype."""
    if weight.shape != x.shape[-1:] or bias.shape != weight.shape:
        raise ValueError(f"layer_norm: weight and bias must have shape {tuple(x.shape[-1:])}, got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    return _layer_norm_op(x, weight, bias, float(eps), str(out_dtype).removeprefix("torch."))[0]
