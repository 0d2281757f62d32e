"""The autograd-aware tensor-parallel collectives the plan's styles put around the layers (``styles``), and the TP
group they run on.

Four of them come from megatron-core's ``tensor_parallel.mappings`` (the same functions its
Column/RowParallelLinear use); one (``scatter_blocks``) is M2-specific; ``own_chunks`` is a plain slice:

==========================  ================================  ===============================================
function                    forward                           backward
==========================  ================================  ===============================================
``copy_to_tp``              identity                          all-reduce (sum) of the input's gradient
``reduce_from_tp``          all-reduce (sum)                  identity
``gather_last_dim``         all-gather, concat on last dim    keep this rank's slice (no communication)
``scatter_blocks``          keep this rank's chunks (no comm) all-gather of the chunks' gradients
``own_chunks``              keep this rank's chunks (no comm) the slice's gradient (zeros elsewhere, no comm)
``sum_over_context``        all-reduce (sum) over CP          all-reduce (sum) over CP
==========================  ================================  ===============================================

``sum_over_context`` is the one context-parallel mapping here (the mixer's live in ``context_conv``): it joins
per-rank partial sums into a replicated value (M2-ViT's mean over patches, ``styles.ContextMean``). Its backward is
an all-reduce too, not megatron's identity, because the trainer's loss on replicated values is split over the CP
ranks: each holds 1/CP of it (its target count is counted on every CP rank), so each rank's gradient of the
replicated sum is 1/CP of the true one, and their sum is what each rank's partial inputs need.

Why the wrapper around megatron's ``copy_to``: megatron's ``_reduce`` runs ``all_reduce(input_.contiguous())`` and
returns the *original* tensor (stack-facts §3), so a non-contiguous upstream gradient (e.g. one that went through a
``transpose`` or an ``expand``) would silently lose the reduction. ``_ContiguousGrad`` sits just after ``copy_to`` and
makes every gradient that reaches it contiguous.

On CPU, megatron's all-gather allocates with ``torch.cuda.current_device()``: ``groups.apply_megatron_cpu_patch()``
(applied by ``init_groups``) points it at the CPU.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def tp_rank() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank()


def tp_size() -> int:
    # Not imported = not initialised: a TP=1 process never pays megatron's import (groups.py).
    if "megatron.core.parallel_state" not in sys.modules:
        return 1
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 1
    return parallel_state.get_tensor_model_parallel_world_size()


def _megatron_initialised() -> bool:
    # Not imported = not initialised: a TP = CP = 1 process never pays megatron's import (groups.py).
    if "megatron.core.parallel_state" not in sys.modules:
        return False
    from megatron.core import parallel_state

    return parallel_state.model_parallel_is_initialized()


def cp_group():
    """The context-parallel group (megatron's; ranks TP apart, in sequence order)."""
    from megatron.core import parallel_state

    return parallel_state.get_context_parallel_group()


def cp_rank() -> int:
    if not _megatron_initialised():
        return 0
    from megatron.core import parallel_state

    return parallel_state.get_context_parallel_rank()


def cp_size() -> int:
    if not _megatron_initialised():
        return 1
    from megatron.core import parallel_state

    return parallel_state.get_context_parallel_world_size()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient (see the module docstring)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def copy_to_tp(x: torch.Tensor) -> torch.Tensor:
    """Enter a tensor-parallel region with a replicated input: identity forward, all-reduce of the grad backward."""
    from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

    return _ContiguousGrad.apply(copy_to_tensor_model_parallel_region(x))


def reduce_from_tp(x: torch.Tensor) -> torch.Tensor:
    """Leave a tensor-parallel region by summing partial results (row-parallel output)."""
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(x.contiguous())


class _SumOverContext(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sum_over_context(x: torch.Tensor) -> torch.Tensor:
    """The sum over the context-parallel group of each rank's partial ``x`` (see the module docstring)."""
    return _SumOverContext.apply(x, cp_group())


def gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Leave a tensor-parallel region whose output is channel-sharded (contiguous slices in rank order)."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(x.contiguous())


def _chunk_ids(rank: int, size: int, stride: int) -> list[int]:
    """Chunks a rank owns when a dimension is cut into ``stride * size`` equal chunks (megatron's ``partition_stride``
    convention): ``rank, rank + size, rank + 2*size, ...``."""
    return [rank + s * size for s in range(stride)]


def own_chunks(x: torch.Tensor, stride: int, rank: int, size: int) -> torch.Tensor:
    """This rank's ``stride`` chunks of ``x``'s last dim (cut into ``stride * size``), differentiable, no
    communication: for a replicated tensor already inside the TP region."""
    if stride == 1:
        n = x.shape[-1] // size
        return x[..., rank * n:(rank + 1) * n]
    chunks = x.chunk(stride * size, dim=-1)
    return torch.cat([chunks[c] for c in _chunk_ids(rank, size, stride)], dim=-1)


class _ScatterBlocks(torch.autograd.Function):
    """Forward: this rank's chunks (megatron stride layout) of a replicated last dim, no communication.
    Backward: the chunks' gradients are disjoint across ranks, so the full gradient is an all-gather (half the bytes
    of the all-reduce that ``copy_to_tp`` + slicing would cost), put back in channel order."""

    @staticmethod
    def forward(ctx, x, stride, rank, size, group):
        ctx.stride, ctx.rank, ctx.size, ctx.group = stride, rank, size, group
        chunks = x.chunk(stride * size, dim=-1)
        return torch.cat([chunks[c] for c in _chunk_ids(rank, size, stride)], dim=-1)

    @staticmethod
    def backward(ctx, grad):
        stride, size = ctx.stride, ctx.size
        grad = grad.contiguous()
        parts = [torch.empty_like(grad) for _ in range(size)]
        dist.all_gather(parts, grad, group=ctx.group)
        # parts[r] holds rank r's chunks [r, r+size, ...]; full chunk c = s*size + r is parts[r]'s s-th chunk.
        per_rank = [p.chunk(stride, dim=-1) for p in parts]
        full = torch.cat([per_rank[r][s] for s in range(stride) for r in range(size)], dim=-1)
        return full, None, None, None, None


def scatter_blocks(x: torch.Tensor, stride: int) -> torch.Tensor:
    """This rank's ``stride`` chunks of the replicated ``x``'s last dim (cut into ``stride * tp`` chunks)."""
    return _ScatterBlocks.apply(x, stride, tp_rank(), tp_size(), tp_group())

