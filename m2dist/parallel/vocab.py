"""Vocab-parallel embedding, output layer and cross-entropy (megatron-core's scheme).

Rank r holds vocabulary rows ``[r*V/k, (r+1)*V/k)`` of the token embedding, and -- tied or not -- of the LM head
(``lm_head.weight`` in GPT, ``head.decoder.{weight,bias}`` in BERT). The embedding looks up the ids that fall in its
range, zeros the others and all-reduces (``VocabParallelEmbedding``'s logic, applied to the existing ``nn.Embedding``
so its name and its tie to the head survive). The head is column-parallel over the vocabulary
(``linear.ColumnParallelLinear``) and returns *sharded*
logits (B, L, V/k); the loss is ``megatron.core.tensor_parallel.vocab_parallel_cross_entropy``, which needs three
all-reduces of (B, L) scalars and never materialises the full logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from m2dist.parallel.mappings import gather_last_dim, reduce_from_tp, tp_group, tp_rank

IGNORE_INDEX = -100


class VocabParallelEmbedding(nn.Embedding):
    """An nn.Embedding holding rows ``[vocab_start, vocab_start + num_embeddings)`` of the full table."""

    vocab_start: int

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        start, end = self.vocab_start, self.vocab_start + self.num_embeddings
        outside = (ids < start) | (ids >= end)
        local = (ids - start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside[..., None], 0.0)
        return reduce_from_tp(out)


def parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position losses (labels' shape, 0 where ``labels == -100``) from vocab-sharded logits (..., V/k)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    ignored = labels == IGNORE_INDEX
    target = labels.masked_fill(ignored, 0)
    # megatron subtracts the max in place from logits.float(), which *is* the caller's tensor in fp32.
    logits = logits.float().clone() if logits.dtype == torch.float32 else logits.float()
    return vocab_parallel_cross_entropy(logits, target).masked_fill(ignored, 0.0)


@torch.no_grad()
def parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Global argmax over the vocabulary of vocab-sharded logits (ties go to the lowest id, as torch.argmax)."""
    value, index = logits.float().max(dim=-1)
    index = index + tp_rank() * logits.shape[-1]
    group = tp_group()
    size = dist.get_world_size(group)
    values = [torch.empty_like(value) for _ in range(size)]
    indices = [torch.empty_like(index) for _ in range(size)]
    dist.all_gather(values, value.contiguous(), group=group)
    dist.all_gather(indices, index.contiguous(), group=group)
    values, indices = torch.stack(values), torch.stack(indices)
    best = values.argmax(dim=0, keepdim=True)  # first maximum: the lowest rank, i.e. the lowest vocabulary id
    return indices.gather(0, best)[0]


def gather_logits(logits: torch.Tensor) -> torch.Tensor:
    """Full logits (..., V) from vocab-sharded ones (..., V/k): for tests and tools, not for training."""
    return gather_last_dim(logits)
