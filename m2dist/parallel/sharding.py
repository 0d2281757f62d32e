"""Cutting and rebuilding tensors by their ``ShardSpec`` (``plan``): one tensor, a live module's parameters, and the
maps full state dict <-> per-rank state dicts, offline (a list of the ranks' state dicts) or of a live sharded model
(a gather over its TP group).

``shard_state_dict`` / ``gather_state_dict`` are exact inverses (pure slicing and concatenation), which is what lets
a checkpoint be resharded from TP=a to TP=b through the full state dict (``m2dist.checkpoint``), and exported as one
consolidated single-device model. They apply equally to parameter-shaped optimizer state (Adam's moments), which is
sharded exactly like its parameter.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from m2dist.parallel.plan import REPLICATED, ShardSpec, plan_for_model, shard_plan


# ------------------------------------------------------------------ one tensor
def shard_tensor(full: torch.Tensor, spec: ShardSpec, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Rank ``tp_rank``'s piece of ``full`` (a view-free copy, contiguous)."""
    if spec.replicated or tp_size == 1:
        return full.clone()
    n = spec.stride * tp_size
    if full.shape[spec.dim] % n:
        raise ValueError(f"dimension {spec.dim} of size {full.shape[spec.dim]} does not split into {n} equal chunks "
                         f"(stride {spec.stride} x tensor parallel {tp_size})")
    chunks = full.chunk(n, dim=spec.dim)
    return torch.cat([chunks[tp_rank + s * tp_size] for s in range(spec.stride)], dim=spec.dim).contiguous()


def gather_tensor(pieces: list[torch.Tensor], spec: ShardSpec) -> torch.Tensor:
    """The full tensor from every rank's piece (rank order): the inverse of :func:`shard_tensor`."""
    if spec.replicated or len(pieces) == 1:
        return pieces[0].clone()
    size = len(pieces)
    per_rank = [p.chunk(spec.stride, dim=spec.dim) for p in pieces]
    return torch.cat([per_rank[r][s] for s in range(spec.stride) for r in range(size)], dim=spec.dim)


def full_shape(local_shape, spec: ShardSpec, tp_size: int) -> tuple[int, ...]:
    """The single-device shape of a tensor whose rank piece has ``local_shape``."""
    shape = list(local_shape)
    if not spec.replicated:
        shape[spec.dim] *= tp_size
    return tuple(shape)


# ------------------------------------------------------------------ a live module
def shard_tensor_(module: nn.Module, name: str, spec: ShardSpec, rank: int, size: int,
                  done: dict[int, torch.Tensor]) -> None:
    """Replace ``module.<name>`` (a dotted Parameter or buffer name) by this rank's slice, keeping requires_grad and a
    buffer's persistence. ``done`` maps tensors already cut (by id) to their slice, so tied parameters stay tied."""
    owner_path, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_path)
    old = getattr(owner, attr)
    if id(old) not in done:
        piece = shard_tensor(old.detach(), spec, rank, size)
        done[id(old)] = nn.Parameter(piece, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else piece
    new = done[id(old)]
    if isinstance(new, nn.Parameter):
        setattr(owner, attr, new)
    else:
        owner._buffers[attr] = new


# ------------------------------------------------------------------ state dicts
def _plan(model_config_or_plan) -> Mapping[str, ShardSpec]:
    if isinstance(model_config_or_plan, Mapping):
        return model_config_or_plan
    return shard_plan(model_config_or_plan)


def shard_state_dict(full_sd: Mapping[str, torch.Tensor], tp_rank: int, tp_size: int, model_config) -> dict:
    """Rank ``tp_rank``'s state dict (same keys) of the single-device state dict ``full_sd``.

    ``model_config`` is a ModelConfig, or a plan (``{name: ShardSpec}``) already computed. Keys the plan does not
    know (e.g. optimizer-side extras) are treated as replicated."""
    plan = _plan(model_config)
    return {k: shard_tensor(v, plan.get(k, REPLICATED), tp_rank, tp_size) for k, v in full_sd.items()}


def gather_state_dict(shards: list[Mapping[str, torch.Tensor]], model_config) -> dict:
    """The single-device state dict from all TP ranks' state dicts (a list in TP-rank order)."""
    plan = _plan(model_config)
    return {k: gather_tensor([s[k] for s in shards], plan.get(k, REPLICATED)) for k in shards[0]}


def reshard_state_dicts(shards: list[Mapping[str, torch.Tensor]], model_config, new_tp_size: int) -> list[dict]:
    """TP=len(shards) state dicts -> TP=new_tp_size state dicts (through the full one)."""
    full = gather_state_dict(shards, model_config)
    return [shard_state_dict(full, r, new_tp_size, model_config) for r in range(new_tp_size)]


@torch.no_grad()
def gather_full_state_dict(model: nn.Module, dst: Optional[int] = None) -> dict:
    """Collective over the TP group: the single-device state dict of a tensor-parallel ``model`` (on every TP rank,
    or only on group rank ``dst`` when given -- the others return {})."""
    from m2dist.parallel.mappings import tp_group, tp_rank, tp_size

    plan = plan_for_model(model)
    size = tp_size()
    group = tp_group() if size > 1 else None
    out = {}
    for name, t in model.state_dict().items():
        spec = plan[name]
        if spec.replicated or size == 1:
            out[name] = t.detach().clone()
            continue
        pieces = [torch.empty_like(t) for _ in range(size)]
        dist.all_gather(pieces, t.detach().contiguous(), group=group)
        out[name] = gather_tensor(pieces, spec)
    if dst is not None and size > 1 and tp_rank() != dst:
        return {}
    return out
