"""Tensor-parallel M2 layers ("sharded Monarch blocks"), made in place from the single-device modules.

The modules are converted by swapping their class for a subclass whose ``forward`` adds the collectives, and by
replacing each sharded ``nn.Parameter`` with this rank's slice (``sharding.shard_tensor``). Parameter names are
therefore those of the single-device model, and ``isinstance`` checks (e.g. the optimizer's filter group) still hold.

**Sequence mixer** (spec §1.6, §5.7) -- channel-sharded, one collective each way:

    u (replicated) --copy_to_tp--> in_proj (column-parallel: x1|x2|v rows of this rank's H/k channels)
      -> short conv, gates, long convs, D skips, residual long conv of u[:, my channels]  (all local, per channel)
      -> out_proj (row-parallel) --reduce_from_tp (all-reduce)--> + bias  (replicated)

  The implicit filters are channel-local too: their hidden layers (z, freq, three Linear+Sin) are computed
  redundantly on every rank from replicated parameters, and only the output layer (order -> H) is sharded by rows.
  Its input goes through ``copy_to_tp`` so the replicated filter parameters receive the gradient of *all* channels
  (an all-reduce of an (L, order) tensor in backward -- tiny next to the activations).

**Monarch GLU** (spec §1.5) -- block-sharded, no communication inside. With ``nb`` blocks, gate block ``b`` (input
chunk ``b``) pairs elementwise with value block ``b + nb/2`` (input chunk ``b + nb/2``), and their product (2I/nb
channels) feeds exactly out_proj blocks ``2b, 2b+1`` (output chunks ``2b, 2b+1``). TP rank ``r`` owns the
``m = nb/(2k)`` consecutive pairs ``b in [r*m, (r+1)*m)``:

  * ``gated_proj`` blocks ``[r*m, (r+1)*m) + [nb/2 + r*m, nb/2 + (r+1)*m)`` (megatron stride 2 on the block dim),
  * ``out_proj`` blocks ``[2rm, 2(r+1)m)`` and the matching ``H/k`` bias entries (stride 1),
  * input chunks of the same ids as its gate/value blocks, output channels ``[r*H/k, (r+1)*H/k)``: a contiguous
    slice of the hidden dim, in rank order.

  So the layer's **one collective** is an all-gather of the MLP output along the hidden dim at the MLP's exit
  (``gather_last_dim``): the output is channel-sharded, and what follows -- the residual add and the LayerNorm, whose
  statistics mix all channels (spec §1.5: "only the LayerNorm statistics mix all channels"), and the next mixer's
  dense in_proj -- needs all H channels. Its backward is a local slice. The input side needs no forward
  communication (each rank reads its chunks of the replicated ``h``); in backward the input gradient chunks are
  disjoint across ranks, so ``scatter_blocks`` recombines them with an all-gather rather than an all-reduce. Per layer
  and step the MLP thus moves 2 all-gathers of H/k per token and rank, half of a Megatron MLP's 2 all-reduces.
  TP must divide ``nb/2`` (nb=4: TP<=2; use nblocks=8 for TP=4).
"""

from __future__ import annotations

from typing import Optional

import torch

from m2dist.models.hyena_filter import FilterMLP, ImplicitFilter
from m2dist.models.monarch_mlp import MonarchGLU
from m2dist.models.sequence_mixer import M2SequenceMixer
from m2dist.monarch import BlockDiagonalLinear
from m2dist.parallel.linear import make_column_parallel_, make_row_parallel_, shard_parameter_
from m2dist.parallel.mappings import copy_to_tp, gather_last_dim, scatter_blocks
from m2dist.parallel.rng import ShardedDropout
from m2dist.parallel.sharding import ShardSpec


# ---------------------------------------------------------------- implicit filter
def shard_implicit_filter_(f: ImplicitFilter, rank: int, size: int) -> None:
    rows = ShardSpec(0, 1)
    mlps: list[Optional[FilterMLP]] = [f.mlp_fwd, f.mlp_rev]
    for mlp in mlps:
        if mlp is None:
            continue
        # The filter MLP's output layer: order -> this rank's H/k channel rows, behind copy_to_tp.
        make_column_parallel_(mlp.out, rank, size)
    shard_parameter_(f, "D", rows, rank, size)
    shard_parameter_(f, "decay", rows, rank, size)  # fixed per-channel modulation (a buffer)
    f.channels = f.D.shape[0]


# ---------------------------------------------------------------- sequence mixer
class TensorParallelM2SequenceMixer(M2SequenceMixer):
    """M2SequenceMixer over this rank's H/k channels (``hidden_size`` is the local width, ``tp_channels`` the
    slice of the full hidden dim). ``M2SequenceMixer.forward`` runs unchanged; the collectives are in its two
    overridden steps, the column-parallel filter output rows and the row-parallel out_proj."""

    tp_channels: slice

    def enter_channels(self, u: torch.Tensor) -> torch.Tensor:
        return copy_to_tp(u)  # enter the TP region once: backward all-reduces the input gradient

    def own_channels(self, u: torch.Tensor) -> torch.Tensor:
        return u[..., self.tp_channels]  # the residual long conv of this rank's channels of the replicated input


def shard_sequence_mixer_(mixer: M2SequenceMixer, rank: int, size: int) -> None:
    h = mixer.hidden_size
    if h % size:
        raise ValueError(f"model.hidden_size={h} is not divisible by parallel.tensor={size}")
    local = h // size
    # x1 | x2 | v: the same channel slice of each (stride 3). The mixer enters the TP region itself, once, because
    # the residual long conv reads the same replicated input.
    make_column_parallel_(mixer.in_proj, rank, size, stride=3, copy_input=False)
    for name in ("weight", "bias"):
        shard_parameter_(mixer.short_conv, name, ShardSpec(0, 3), rank, size)
    conv = mixer.short_conv
    conv.in_channels = conv.out_channels = conv.groups = 3 * local
    make_row_parallel_(mixer.out_proj, rank, size)
    for f in (mixer.filter, mixer.residual_filter):
        if f is not None:
            shard_implicit_filter_(f, rank, size)
    mixer.__class__ = TensorParallelM2SequenceMixer
    mixer.hidden_size = local
    mixer.tp_channels = slice(rank * local, (rank + 1) * local)


# ---------------------------------------------------------------- Monarch GLU
class BlockParallelInput(BlockDiagonalLinear):
    """The GLU's ``gated_proj`` over this rank's gate/value blocks, reading its input chunks of the replicated h."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(scatter_blocks(h, 2))  # no comm forward; backward: all-gather of the input grads


class BlockParallelOutput(BlockDiagonalLinear):
    """The GLU's ``out_proj`` over this rank's blocks: H/k output channels, all-gathered to H."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return gather_last_dim(super().forward(a))  # the layer's one collective


def shard_monarch_glu_(mlp: MonarchGLU, rank: int, size: int) -> None:
    """MonarchGLU's own forward runs unchanged (on the local I/k intermediate): the parallelism is in its two
    converted block-diagonal layers and its dropout."""
    gated, out = mlp.gated_proj, mlp.out_proj
    if not isinstance(gated, BlockDiagonalLinear):
        raise NotImplementedError(
            "tensor parallelism shards block-diagonal GLUs (model.mlp_type=blockdiag); the order-2 Monarch "
            "GLU's permutation mixes blocks across ranks and would need an all-to-all between its factors")
    nb = gated.nblocks
    if nb % 2 or (nb // 2) % size:
        raise ValueError(
            f"parallel.tensor={size} must divide nblocks/2 = {nb / 2:g}: each rank owns whole gate/value block "
            f"pairs (model.nblocks={nb} allows tensor parallelism up to {max(nb // 2, 1)})")
    full_i = mlp.intermediate_size
    shard_parameter_(gated, "weight", ShardSpec(0, 2), rank, size)
    shard_parameter_(out, "weight", ShardSpec(0, 1), rank, size)
    shard_parameter_(out, "bias", ShardSpec(0, 1), rank, size)
    for layer in (gated, out):
        layer.nblocks = layer.weight.shape[0]
        layer.in_features = layer.nblocks * layer.weight.shape[2]
        layer.out_features = layer.nblocks * layer.weight.shape[1]
    local_i = full_i // size
    # The gate channels of this rank's pairs are the contiguous slice [r*I/k, (r+1)*I/k) of the intermediate.
    mlp.dropout = ShardedDropout(mlp.dropout.p, full_i, rank * local_i)
    mlp.intermediate_size = local_i
    gated.__class__ = BlockParallelInput
    out.__class__ = BlockParallelOutput
