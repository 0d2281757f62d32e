"""Column- and row-parallel ``nn.Linear`` made in place, and the helper that swaps a parameter for its shard.

The classes subclass ``nn.Linear`` and only change ``forward``: a converted layer keeps its parameter names, and is
still called as a module (so per-module hooks -- ZeRO-3's parameter gathering, activation checkpointing -- see it).
Megatron's ``ColumnParallelLinear``/``RowParallelLinear`` would bring their own names, init and ``(output, bias)``
convention; the maths here is the same, with megatron's mappings doing the communication.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2dist.parallel.mappings import copy_to_tp, reduce_from_tp
from m2dist.parallel.sharding import ShardSpec, shard_tensor


def shard_parameter_(module: nn.Module, name: str, spec: ShardSpec, rank: int, size: int) -> None:
    """Replace ``module.<name>`` (a Parameter or a buffer) by this rank's slice, keeping requires_grad."""
    old = getattr(module, name)
    piece = shard_tensor(old.detach(), spec, rank, size)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(piece, requires_grad=old.requires_grad))
    else:
        module._buffers[name] = piece


class ColumnParallelLinear(nn.Linear):
    """Replicated input, output features sharded (weight rows / bias entries of this rank)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x), self.weight, self.bias)


class RowParallelLinear(nn.Linear):
    """Input features sharded (weight columns of this rank), output summed over the group; the bias is replicated
    and added once, after the all-reduce."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_from_tp(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def make_column_parallel_(layer: nn.Linear, rank: int, size: int, stride: int = 1, copy_input: bool = True) -> None:
    """Shard ``layer``'s output features (``stride`` as in ``ShardSpec``). ``copy_input=False`` leaves the layer a
    plain local ``nn.Linear`` for a caller that has already entered the TP region with ``copy_to_tp``."""
    for name in ("weight", "bias"):
        if getattr(layer, name) is not None:
            shard_parameter_(layer, name, ShardSpec(0, stride), rank, size)
    layer.out_features = layer.weight.shape[0]
    if copy_input:
        layer.__class__ = ColumnParallelLinear


def make_row_parallel_(layer: nn.Linear, rank: int, size: int) -> None:
    shard_parameter_(layer, "weight", ShardSpec(1, 1), rank, size)
    layer.in_features = layer.weight.shape[1]
    layer.__class__ = RowParallelLinear
