"""The loss-side functions of a model's logits: cross-entropy, argmax and gather, vocab-parallel (megatron-core's
scheme) when the logits are sharded over the vocabulary.

Rank r holds vocabulary rows ``[r*V/k, (r+1)*V/k)`` of the token embedding and -- tied or not -- of the LM head
(``plan``'s vocabulary entries; the embedding is ``styles.VocabParallelEmbedding``). The head returns *sharded*
logits (B, L, V/k); the loss is ``megatron.core.tensor_parallel.vocab_parallel_cross_entropy``, which needs three
all-reduces of (B, L) scalars and never materialises the full logits.

The trainer asks :func:`loss_functions` for the cross-entropy, argmax and logits gather that match how a model's
logits are laid out: vocab-parallel for a tensor-parallel language model, plain torch otherwise.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from m2dist.data.contract import IGNORE_INDEX
from m2dist.parallel.mappings import gather_last_dim, tp_group, tp_rank


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position losses (labels' shape, 0 where ``labels == IGNORE_INDEX``) from full logits (..., V)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`cross_entropy` of vocab-sharded logits (..., V/k)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy as megatron_cross_entropy

    ignored = labels == IGNORE_INDEX
    target = labels.masked_fill(ignored, 0)
    # megatron subtracts the max in place from logits.float(), which *is* the caller's tensor in fp32.
    logits = logits.float().clone() if logits.dtype == torch.float32 else logits.float()
    return megatron_cross_entropy(logits, target).masked_fill(ignored, 0.0)


@torch.no_grad()
def vocab_parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
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


@dataclass(frozen=True)
class LossFunctions:
    cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-position losses, labels' shape
    argmax: Callable[[torch.Tensor], torch.Tensor]                      # predicted ids over the whole vocabulary
    gather_logits: Callable[[torch.Tensor], torch.Tensor]               # full logits (tests and tools)


LOCAL = LossFunctions(cross_entropy, lambda logits: logits.argmax(-1), lambda logits: logits)
VOCAB_PARALLEL = LossFunctions(vocab_parallel_cross_entropy, vocab_parallel_argmax, gather_last_dim)

_HEADS: "weakref.WeakKeyDictionary[nn.Module, Optional[str]]" = weakref.WeakKeyDictionary()


def _head_weight(model: nn.Module) -> Optional[nn.Parameter]:
    """The parameter whose rows the logits' last dim follows (the plan's ``logits_like``), or None. Its name is
    looked up once per model (a walk of the modules); the parameter itself each time, since sharding replaces it."""
    if model not in _HEADS:
        from m2dist.parallel.plan import layer_plans

        _HEADS[model] = next((prefix + plan.logits_like for prefix, _, plan in layer_plans(model)
                              if plan.logits_like), None)
    name = _HEADS[model]
    return None if name is None else model.get_parameter(name)


def loss_functions(model: nn.Module) -> LossFunctions:
    """The loss-side functions for ``model``'s logits: vocab-parallel when its LM head is sharded (megatron's
    ``tensor_model_parallel`` on the head weight, set by ``apply_tensor_parallel`` from the plan), else local."""
    head = _head_weight(model)
    return VOCAB_PARALLEL if getattr(head, "tensor_model_parallel", False) else LOCAL
