"""Per-parameter tensor-parallel shard metadata, and the maps full state dict <-> per-rank shards.

Every parameter of a tensor-parallel model is either replicated or cut along one dimension in megatron-core's
``(partition_dim, partition_stride)`` convention: the full dimension is cut into ``stride * tp`` equal chunks and rank
``r`` holds chunks ``r, r + tp, ..., r + (stride-1)*tp``, concatenated in that order. ``stride`` > 1 describes the
block-interleaved layouts of the single-device model, so no parameter has to be re-laid-out:

====================================================  ====  ======  =============================================
parameter (single-device name)                        dim   stride  why
====================================================  ====  ======  =============================================
``*.mixer.in_proj.{weight,bias}`` (M2)                0     3       output channels x1 | x2 | v: each rank takes
``*.mixer.short_conv.{weight,bias}``                  0     3       the same channel slice of all three
``*.mixer.{filter,residual_filter}.mlp_{fwd,rev}      0     1       filter output rows = channels
.out.weight``, ``*.D``
``*.mixer.out_proj.weight`` (M2 and attention)        1     1       row-parallel (input channels)
``*.mlp.gated_proj.weight`` (Monarch GLU)             0     2       blocks: gate half | value half, rank takes
                                                                    the gate blocks and their value partners
``*.mlp.out_proj.{weight,bias}`` (Monarch GLU)        0     1       blocks / output channels of those pairs
``*.mixer.qkv_proj.{weight,bias}`` (attention)        0     3       q | k | v, heads contiguous
``*.mlp.in_proj.{weight,bias}`` (dense MLP)           0     1       column-parallel
``*.mlp.out_proj.weight`` (dense MLP)                 1     1       row-parallel
token embedding, ``lm_head.weight``,                  0     1       vocab-parallel
``head.decoder.{weight,bias}``
everything else (norms, position tables, filter       --    --      replicated (identical on every TP rank)
hidden layers, z, freq, row-parallel biases, ...)
====================================================  ====  ======  =============================================

The plan is computed from the *single-device* model structure (module types), so it works for any preset and gives
the same names the checkpoints use. ``shard_state_dict`` / ``gather_state_dict`` are exact inverses (pure slicing and
concatenation), which is what lets a checkpoint be resharded from TP=a to TP=b through the full state dict, and
exported as one consolidated single-device model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class ShardSpec:
    """How one parameter is cut over the TP group: ``dim`` None = replicated."""

    dim: Optional[int] = None
    stride: int = 1

    @property
    def replicated(self) -> bool:
        return self.dim is None

    def to_dict(self) -> dict:
        return asdict(self)


REPLICATED = ShardSpec()


def _specs_of_module(prefix: str, module: nn.Module, cfg) -> dict[str, ShardSpec]:
    from m2dist.models.attention import SelfAttention
    from m2dist.models.dense_mlp import DenseMLP
    from m2dist.models.hyena_filter import ImplicitFilter
    from m2dist.models.monarch_mlp import MonarchGLU
    from m2dist.models.sequence_mixer import M2SequenceMixer

    p = prefix
    out: dict[str, ShardSpec] = {}
    if isinstance(module, M2SequenceMixer):
        for name in ("in_proj.weight", "in_proj.bias", "short_conv.weight", "short_conv.bias"):
            out[p + name] = ShardSpec(0, 3)
        out[p + "out_proj.weight"] = ShardSpec(1, 1)
    elif isinstance(module, ImplicitFilter):
        out[p + "D"] = ShardSpec(0, 1)
        out[p + "mlp_fwd.out.weight"] = ShardSpec(0, 1)
        if module.mlp_rev is not None:
            out[p + "mlp_rev.out.weight"] = ShardSpec(0, 1)
    elif isinstance(module, MonarchGLU):
        out[p + "gated_proj.weight"] = ShardSpec(0, 2)
        out[p + "out_proj.weight"] = ShardSpec(0, 1)
        out[p + "out_proj.bias"] = ShardSpec(0, 1)
    elif isinstance(module, SelfAttention):
        out[p + "qkv_proj.weight"] = ShardSpec(0, 3)
        out[p + "qkv_proj.bias"] = ShardSpec(0, 3)
        out[p + "out_proj.weight"] = ShardSpec(1, 1)
    elif isinstance(module, DenseMLP):
        out[p + "in_proj.weight"] = ShardSpec(0, 1)
        out[p + "in_proj.bias"] = ShardSpec(0, 1)
        out[p + "out_proj.weight"] = ShardSpec(1, 1)
    return out


# Vocabulary-sized parameters of the language models (names of m2dist.models.gpt / bert).
VOCAB_PARAMETERS = ("token.weight", "lm_head.weight", "embeddings.token.weight", "head.decoder.weight",
                    "head.decoder.bias")


def plan_for_model(model: nn.Module, cfg=None) -> dict[str, ShardSpec]:
    """``{name: ShardSpec}`` for every entry of the single-device ``model``'s state dict (tied names included)."""
    specs: dict[str, ShardSpec] = {}
    for prefix, module in model.named_modules():
        specs.update(_specs_of_module(prefix + "." if prefix else "", module, cfg))
    plan = {}
    for name in model.state_dict(keep_vars=True):
        if name in specs:
            plan[name] = specs[name]
        elif name in VOCAB_PARAMETERS:
            plan[name] = ShardSpec(0, 1)
        else:
            plan[name] = REPLICATED
    return plan


def shard_plan(model_config) -> dict[str, ShardSpec]:
    """The plan of ``build_model(model_config)``, computed on the meta device (no memory, no RNG use)."""
    from m2dist.models import build_model

    with torch.device("meta"):
        model = build_model(model_config)
    return plan_for_model(model, model_config)


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
    """TP=len(shards) state dicts -> TP=new_tp_size state dicts (through the full one). Applies equally to
    parameter-shaped optimizer state (Adam's exp_avg / exp_avg_sq), which is sharded exactly like its parameter."""
    full = gather_state_dict(shards, model_config)
    return [shard_state_dict(full, r, new_tp_size, model_config) for r in range(new_tp_size)]


@torch.no_grad()
def gather_full_state_dict(model: nn.Module, dst: Optional[int] = None) -> dict:
    """Collective over the TP group: the single-device state dict of a tensor-parallel ``model`` (on every TP rank,
    or only on group rank ``dst`` when given -- the others return {})."""
    import torch.distributed as dist

    from m2dist.parallel.mappings import tp_group, tp_rank, tp_size

    plan = model.tensor_parallel_plan
    size, group = tp_size(), tp_group()
    out = {}
    for name, t in model.state_dict().items():
        spec = plan.get(name, REPLICATED)
        if spec.replicated or size == 1:
            out[name] = t.detach().clone()
            continue
        pieces = [torch.empty_like(t) for _ in range(size)]
        dist.all_gather(pieces, t.detach().contiguous(), group=group)
        out[name] = gather_tensor(pieces, spec)
    if dst is not None and tp_rank() != dst:
        return {}
    return out


# ------------------------------------------------------------------ metadata on the live parameters
def tag_parameters(model: nn.Module, plan: Mapping[str, ShardSpec], tp_size: int) -> None:
    """megatron-core's per-parameter attributes (``tensor_model_parallel``, ``partition_dim``, ``partition_stride``),
    which DeepSpeed's gradient-norm / clipping (via its ``mpu``) and the checkpoint manager's ``parameter_layout``
    read, plus ``tp_full_shape`` (the single-device shape)."""
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

    for name, p in model.named_parameters():  # tied parameters appear once
        spec = plan.get(name, REPLICATED)
        for attr in ("tensor_model_parallel", "partition_dim", "partition_stride"):
            if hasattr(p, attr):
                delattr(p, attr)
        set_tensor_model_parallel_attributes(p, not spec.replicated, -1 if spec.replicated else spec.dim,
                                             spec.stride)
        full = list(p.shape)
        if not spec.replicated:
            full[spec.dim] *= tp_size
        p.tp_full_shape = tuple(full)


def describe(plan: Mapping[str, ShardSpec]) -> dict[str, dict]:
    """JSON-able plan, e.g. for a checkpoint's metadata."""
    return {k: v.to_dict() for k, v in plan.items()}


def affine_map(spec: ShardSpec, full_shape, tp_size: int):
    """DeepSpeed's ``ParamAffineMap`` of one parameter: the geometric form of ``(dim, stride)`` -- rank r holds
    blocks ``r, r + tp, ...`` of ``full_shape[dim] / (stride * tp)`` rows each."""
    from deepspeed.checkpoint.affine import block_gather_map, replicated_map

    full_shape = tuple(full_shape)
    if spec.replicated:
        return replicated_map(full_shape, tp_size)
    n = spec.stride * tp_size
    blocks = {r: [r + s * tp_size for s in range(spec.stride)] for r in range(tp_size)}
    return block_gather_map(full_shape, blocks, full_shape[spec.dim] // n, spec.dim)


def universal_checkpoint_info(model: nn.Module, names: Optional[Iterable[str]] = None) -> dict:
    """DeepSpeed universal-checkpoint info for a TP model: every parameter gets an affine map (DeepSpeed >= 0.19
    ``deepspeed.checkpoint.affine``) that says exactly which chunks of the full tensor each TP rank holds, so
    ``ds_to_universal`` merges the stride-3/stride-2 layouts correctly (its name-pattern categories cannot describe
    them). The same map is attached to each parameter as DeepSpeed's restore metadata
    (``ds_autotp_universal_checkpoint_meta``), so loading a universal checkpoint at another TP size cuts each
    parameter the way this model holds it."""
    import re

    from deepspeed.checkpoint.affine import AFFINE_MAP_FORMAT_VERSION
    from deepspeed.checkpoint.constants import (AFFINE_MAP, AFFINE_MAP_PARAMS, AFFINE_MAP_VERSION,
                                                DS_AUTOTP_UC_META, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    from m2dist.parallel.mappings import tp_size

    plan = model.tensor_parallel_plan
    size = tp_size()
    params = {}
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        spec = plan.get(name, REPLICATED)
        full = p.tp_full_shape
        entry = affine_map(spec, full, size).to_dict()
        params["^" + re.escape(name) + "$"] = entry
        setattr(p, DS_AUTOTP_UC_META, {
            "logical_shape": list(full), "partition_dim": None if spec.replicated else spec.dim,
            "replicated": spec.replicated, UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE,
            "conversion": {"affine_map": entry},
        })
    return {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE,
            AFFINE_MAP: {AFFINE_MAP_VERSION: AFFINE_MAP_FORMAT_VERSION, AFFINE_MAP_PARAMS: params}}
