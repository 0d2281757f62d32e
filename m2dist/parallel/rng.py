"""Tensor-parallel-aware randomness.

**Initialisation.** TP=k initialises exactly the model TP=1 does because every rank builds the *full* single-device
model from the same seed (``m2dist.train.model.build_model_for_training`` seeds before ``build_model``) and then
keeps its slice (``apply_tensor_parallel``). No rank-dependent RNG stream is involved, so there is nothing to keep in sync. The cost is
one full fp32 copy of the model per rank during start-up (fine for the 80M-360M models of this project). A
large-model path would build on the meta device, materialise each sharded parameter at its local shape and fill it
from ``shard_tensor(<full init of that one tensor>)`` (still seeded identically on all ranks, one tensor at a time),
or load a consolidated checkpoint through ``shard_state_dict``.

**Dropout.** Two cases.

* On a *replicated* tensor (embeddings, residual branches): plain ``nn.Dropout`` with the default generator, which is
  identical on the ranks of a TP group (the trainer seeds by data-parallel rank only), so the masks agree.
* On a *sharded* tensor (the GLU's / dense MLP's intermediate): :func:`sharded_dropout` draws the mask of the **full**
  tensor from the default generator -- exactly the draw TP=1 makes -- and keeps this rank's columns. Masks are
  therefore independent across columns (no two ranks reuse a mask) and equal to TP=1's, so TP=k training with
  dropout follows the TP=1 trajectory. It costs one transient full-size mask per rank.
* Attention dropout inside SDPA cannot take a mask, so :func:`rank_rng` runs it under a per-rank stream seeded from a
  number drawn from the default generator (``+ tp_rank``; the plan's ``styles.RankDropoutStream``).

Why not megatron's ``get_cuda_rng_tracker().fork()``: the trainer's activation checkpointing is torch's
non-reentrant ``checkpoint``, which replays the default CPU/CUDA generator states during recomputation but not the
tracker's private states, so a forked stream would give a different mask in the recomputed forward (wrong gradients).
Both mechanisms above draw only from the default generator and are therefore recompute-safe. The tracker is still
seeded by ``init_groups`` and saved with the RNG state, for any megatron code that wants it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def sharded_dropout(x_local: torch.Tensor, p: float, training: bool, full_last_dim: int, start: int) -> torch.Tensor:
    """Dropout of this rank's columns ``[start, start + x_local.shape[-1])`` of a tensor whose full last dim is
    ``full_last_dim``, with the mask TP=1 would draw for the full tensor."""
    if not training or p == 0.0:
        return x_local
    shape = (*x_local.shape[:-1], full_last_dim)
    mask = F.dropout(torch.ones(shape, dtype=x_local.dtype, device=x_local.device), p, True)
    return x_local * mask[..., start:start + x_local.shape[-1]]


class ShardedDropout(nn.Module):
    """``nn.Dropout`` replacement for a column slice of a tensor (see :func:`sharded_dropout`)."""

    def __init__(self, p: float, full_last_dim: int, start: int):
        super().__init__()
        self.p, self.full_last_dim, self.start = p, full_last_dim, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sharded_dropout(x, self.p, self.training, self.full_last_dim, self.start)

    def extra_repr(self) -> str:
        return f"p={self.p}, columns [{self.start}, ...) of {self.full_last_dim}"


@contextlib.contextmanager
def rank_rng(rank: int):
    """Run the body under a random stream distinct per TP rank, derived from (and restoring) the default one."""
    seed = int(torch.randint(0, 2**62, (1,)).item()) + rank
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.default_generators[devices[0]].manual_seed(seed)
        yield
