"""How a planned module's forward is wrapped: the styles of ``plan.AxisPlan.forward``.

A style acts from outside the module: a forward pre-hook or hook on the instance (the module's own forward runs
unchanged), a replacement of a parameter-free child (dropout), or -- for the two torch leaves whose maths changes,
``nn.Linear`` row-parallel and ``nn.Embedding`` vocab-parallel -- a subclass that only changes ``forward``. Parameter
names never change, and no model forward is copied.

``apply(layer, path, plan, rank, size)`` runs before the layer's parameters are sliced, so a style reads the layer's
full sizes; ``plan`` is the layer's ``AxisPlan``, so a style that cuts an activation the way a parameter is cut says
``like=<parameter>`` instead of repeating the spec.

Hooks live on module instances. A converter that runs after ``parallelize`` (``m2dist.kernels.accelerate`` when
called in that order) must therefore convert modules in place -- swap ``__class__`` or copy the hooks over -- or the
wrapping is lost; the trainer converts first (build -> accelerate -> tensor parallel -> activation checkpointing /
compile), so there the styles are applied to the converted modules. The styles never test a module's exact class
except the two torch leaves above, which the kernel converter does not replace.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from m2dist.parallel.mappings import copy_to_tp, gather_last_dim, own_chunks, reduce_from_tp, scatter_blocks


class Style:
    def apply(self, layer: nn.Module, path: str, plan, rank: int, size: int) -> None:
        raise NotImplementedError


def _on_arg(index: int, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A forward pre-hook that passes positional argument ``index`` through ``fn`` (None stays None)."""
    def hook(module, args):
        if len(args) <= index:
            raise TypeError(f"{type(module).__name__} under tensor parallelism takes its argument {index} "
                            f"positionally (a forward pre-hook transforms it)")
        if args[index] is None:
            return None
        return (*args[:index], fn(args[index]), *args[index + 1:])
    return hook


def _on_output(fn: Callable[[torch.Tensor], torch.Tensor]):
    def hook(module, args, output):
        return fn(output)
    return hook


class CopyInput(Style):
    """Enter the TP region with a replicated input: identity forward, all-reduce of its gradient in backward
    (``copy_to_tp``). ``after``: a child whose *output* is the entry point when the child exists (the mixer's
    pre-norm, whose replicated weights must be outside the region to get the full gradient)."""

    def __init__(self, after: str = ""):
        self.after = after

    def apply(self, layer, path, plan, rank, size):
        module = layer.get_submodule(path)
        child = getattr(module, self.after, None) if self.after else None
        if isinstance(child, nn.Module):
            child.register_forward_hook(_on_output(copy_to_tp))
        else:
            module.register_forward_pre_hook(_on_arg(0, copy_to_tp))


class SliceInput(Style):
    """Positional argument ``arg`` (replicated, inside the region) -> this rank's part of its last dim, cut like
    ``like``'s sharded dim. No communication either way (the region's entry reduces the gradient)."""

    def __init__(self, arg: int, like: str):
        self.arg, self.like = arg, like

    def apply(self, layer, path, plan, rank, size):
        stride = plan.params[self.like].stride
        layer.get_submodule(path).register_forward_pre_hook(
            _on_arg(self.arg, lambda x: own_chunks(x, stride, rank, size)))


class ScatterInput(Style):
    """Argument 0 (replicated) -> this rank's chunks of its last dim, cut like ``like``'s sharded dim; backward
    all-gathers the disjoint chunk gradients (``scatter_blocks``)."""

    def __init__(self, like: str):
        self.like = like

    def apply(self, layer, path, plan, rank, size):
        stride = plan.params[self.like].stride
        layer.get_submodule(path).register_forward_pre_hook(_on_arg(0, lambda x: scatter_blocks(x, stride)))


class GatherOutput(Style):
    """Channel-sharded output (contiguous slices in rank order) -> all-gathered; backward keeps this rank's slice."""

    def apply(self, layer, path, plan, rank, size):
        layer.get_submodule(path).register_forward_hook(_on_output(gather_last_dim))


class RowParallelLinear(nn.Linear):
    """Input features sharded, output summed over the group; the replicated bias is added once, after the sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_from_tp(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


class ReduceOutput(Style):
    """Row-parallel ``nn.Linear`` (torchtitan's ``RowwiseParallel``): the partial products are all-reduced before
    the bias, so the layer becomes :class:`RowParallelLinear` (same parameters, only ``forward`` differs)."""

    def apply(self, layer, path, plan, rank, size):
        module = layer.get_submodule(path)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"ReduceOutput shards an nn.Linear, {path} is a {type(module).__name__}")
        module.__class__ = RowParallelLinear


class VocabParallelEmbedding(nn.Embedding):
    """Vocab-parallel: an nn.Embedding holding rows ``[vocab_start, vocab_start + num_embeddings)`` of the full table."""

    vocab_start: int

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        start, end = self.vocab_start, self.vocab_start + self.num_embeddings
        outside = (ids < start) | (ids >= end)
        local = (ids - start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside[..., None], 0.0)
        return reduce_from_tp(out)


class VocabEmbedding(Style):
    """Vocab-parallel ``nn.Embedding`` (:class:`VocabParallelEmbedding`): this rank's rows, a masked lookup of the ids
    in its range, an all-reduce; the class changes, not the object, so the name and the tie to the head survive."""

    def apply(self, layer, path, plan, rank, size):
        module = layer.get_submodule(path)
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"VocabEmbedding shards an nn.Embedding, {path} is a {type(module).__name__}")
        module.__class__ = VocabParallelEmbedding
        module.vocab_start = rank * (module.num_embeddings // size)


class ColumnDropout(Style):
    """Dropout of a tensor whose last dim (``features`` of the layer, full size) is sharded in contiguous slices:
    the child is replaced by ``rng.ShardedDropout``, which draws TP=1's mask and keeps this rank's columns."""

    def __init__(self, features: str):
        self.features = features

    def apply(self, layer, path, plan, rank, size):
        from m2dist.parallel.rng import ShardedDropout

        parent_path, _, name = path.rpartition(".")
        parent = layer.get_submodule(parent_path)
        full = operator.attrgetter(self.features)(layer)
        setattr(parent, name, ShardedDropout(getattr(parent, name).p, full, rank * (full // size)))


class RankDropoutStream(Style):
    """Run the module under a random stream distinct per rank while it trains with dropout ``p`` (> 0): its dropout
    acts on sharded data whose mask cannot be drawn as TP=1's (SDPA's attention dropout). ``rng.rank_rng``."""

    def __init__(self, p: str = "dropout"):
        self.p = p

    def apply(self, layer, path, plan, rank, size):
        from m2dist.parallel.rng import rank_rng

        module = layer.get_submodule(path)
        open_streams: list[contextlib.ExitStack] = []

        def enter(mod, args):
            stack = contextlib.ExitStack()
            if mod.training and getattr(mod, self.p) > 0:
                stack.enter_context(rank_rng(rank))
            open_streams.append(stack)

        def leave(mod, args, output):
            open_streams.pop().close()

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave, always_call=True)


# ---------------------------------------------------------------- context parallelism (axis "cp")
class ContextParallelCore(Style):
    """The M2 mixer core on this CP rank's tokens: ``context_conv.context_parallel_mixer_core`` (halo short conv,
    all-to-all to channel shards around full-length long convs) in place of ``mixer_core``, with the core's own
    ``long_conv`` -- the reference, or a kernel's once ``kernels.accelerate`` swapped the core's class.

    The replacement is an instance attribute ``forward``: it outlives a class swap done afterwards, and wins over a
    fused core's forward done before, so CP takes precedence over the fused-core kernel in either order (the fused
    kernel convolves the whole sequence on one rank). The core's pre-hooks (TP's ``SliceInput`` of ``u``) still run
    first. The group is megatron's context-parallel group, looked up per call."""

    def apply(self, layer, path, plan, rank, size):
        import types

        core = layer.get_submodule(path)

        def forward(self, z, u, conv_weight, conv_bias, filt, residual_filt=None, keep=None):
            from m2dist.parallel.context_conv import context_parallel_mixer_core
            from m2dist.parallel.mappings import cp_group

            return context_parallel_mixer_core(z, u, conv_weight, conv_bias, filt, residual_filt, keep, cp_group(),
                                               long_conv=self.long_conv)

        core.forward = types.MethodType(forward, core)


class ContextFilter(Style):
    """An implicit filter under CP: asked for ``length`` taps (the rank's tokens), it generates the global length's
    taps (``length x size``), for this rank's channels only (``context_conv.context_channels`` of its channels, the
    TP-local ones under TP), the ones the rank convolves after the all-to-all. Generated once, for what the rank
    needs; the CP core takes the rank's rows as they are (and slices the full-width ``D`` itself)."""

    def apply(self, layer, path, plan, rank, size):
        from m2dist.parallel.context_conv import context_channels

        def hook(module, args, kwargs):
            if len(args) != 1 or "channels" in kwargs:
                raise TypeError("an implicit filter under context parallelism is called as filter(length)")
            return (args[0] * size,), {"channels": context_channels(module.channels, rank, size)}

        layer.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True)


class PositionOffset(Style):
    """A position-embedding lookup of ``arange(L/CP)`` -> this rank's positions ``rank * L/CP + arange(L/CP)``."""

    def apply(self, layer, path, plan, rank, size):
        layer.get_submodule(path).register_forward_pre_hook(_on_arg(0, lambda ids: ids + rank * ids.shape[-1]))


class ContextMean(Style):
    """A mean over the sequence (dim 1) of this rank's tokens -> the mean over every CP rank's: the local sum,
    summed over the CP group (``mappings.sum_over_context``, all-reduce both ways), over the global count."""

    def apply(self, layer, path, plan, rank, size):
        import types

        from m2dist.parallel.mappings import sum_over_context

        def forward(self, x):
            return sum_over_context(x.sum(dim=1)) / (x.shape[1] * size)

        module = layer.get_submodule(path)
        module.forward = types.MethodType(forward, module)
