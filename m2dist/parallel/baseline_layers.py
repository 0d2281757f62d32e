"""Tensor-parallel Transformer-baseline layers (Megatron's layout), made in place like ``m2_layers``.

* Attention: ``qkv_proj`` column-parallel over heads (rank r: heads [r*n/k, (r+1)*n/k) of q, k and v -- stride 3 on
  the q|k|v rows), SDPA on the local heads, ``out_proj`` row-parallel. Collectives: ``copy_to_tp`` at the input
  (all-reduce of the input gradient in backward), all-reduce of the output in forward.
* Dense MLP: ``in_proj`` column-parallel, GELU and dropout local, ``out_proj`` row-parallel; same two collectives.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from m2dist.models.attention import SelfAttention
from m2dist.models.dense_mlp import DenseMLP
from m2dist.parallel.linear import make_column_parallel_, make_row_parallel_
from m2dist.parallel.mappings import tp_rank
from m2dist.parallel.rng import ShardedDropout, rank_rng


class TensorParallelSelfAttention(SelfAttention):
    """SelfAttention over this rank's heads (``num_heads`` is the local count)."""

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].bool()
            if self.causal:
                mask = mask & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            mask = mask | torch.eye(length, dtype=torch.bool, device=x.device)
        p = self.dropout if self.training else 0.0
        # Different heads on different ranks: their dropout masks must come from different streams.
        with rank_rng(tp_rank()) if p > 0 else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               is_causal=self.causal and mask is None)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1))


def shard_attention_(attn: SelfAttention, rank: int, size: int) -> None:
    if attn.num_heads % size:
        raise ValueError(f"model.num_heads={attn.num_heads} is not divisible by parallel.tensor={size}")
    make_column_parallel_(attn.qkv_proj, rank, size, stride=3)  # q | k | v rows of this rank's heads
    make_row_parallel_(attn.out_proj, rank, size)
    attn.__class__ = TensorParallelSelfAttention
    attn.num_heads //= size


def shard_dense_mlp_(mlp: DenseMLP, rank: int, size: int) -> None:
    """DenseMLP's own forward runs unchanged: the parallelism is in its converted layers and dropout."""
    full_i = mlp.in_proj.out_features
    if full_i % size:
        raise ValueError(f"model.intermediate_size={full_i} is not divisible by parallel.tensor={size}")
    make_column_parallel_(mlp.in_proj, rank, size)
    make_row_parallel_(mlp.out_proj, rank, size)
    mlp.dropout = ShardedDropout(mlp.dropout.p, full_i, rank * (full_i // size))
