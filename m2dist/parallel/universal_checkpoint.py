"""DeepSpeed universal-checkpoint metadata of a tensor-parallel model, from the plan: one affine map per parameter.

DeepSpeed >= 0.19's ``deepspeed.checkpoint.affine`` maps say exactly which chunks of the full tensor each TP rank
holds, so ``ds_to_universal`` merges the stride-3 / stride-2 layouts correctly (its name-pattern categories cannot
describe them). The same map is attached to each parameter as DeepSpeed's restore metadata
(``ds_autotp_universal_checkpoint_meta``), so loading a universal checkpoint at another TP size cuts each parameter
the way this model holds it.
"""

from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

from m2dist.parallel.plan import ShardSpec, plan_for_model
from m2dist.parallel.sharding import full_shape


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


def universal_checkpoint_info(model: nn.Module, names: Optional[Iterable[str]] = None) -> Optional[dict]:
    """The ``universal_checkpoint_info`` of a tensor-parallel ``model`` (None when it is not tensor parallel), and
    the restore metadata on each of its parameters (``names`` only, when given)."""
    import re

    from m2dist.parallel.mappings import tp_size

    size = tp_size()
    if size == 1:
        return None
    from deepspeed.checkpoint.affine import AFFINE_MAP_FORMAT_VERSION
    from deepspeed.checkpoint.constants import (AFFINE_MAP, AFFINE_MAP_PARAMS, AFFINE_MAP_VERSION,
                                                DS_AUTOTP_UC_META, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    plan = plan_for_model(model)
    params = {}
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        spec = plan[name]
        full = full_shape(getattr(p, "ds_shape", p.shape), spec, size)  # ZeRO-3 partitions p itself
        entry = affine_map(spec, full, size).to_dict()
        params["^" + re.escape(name) + "$"] = entry
        setattr(p, DS_AUTOTP_UC_META, {
            "logical_shape": list(full), "partition_dim": None if spec.replicated else spec.dim,
            "replicated": spec.replicated, UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE,
            "conversion": {"affine_map": entry},
        })
    return {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE,
            AFFINE_MAP: {AFFINE_MAP_VERSION: AFFINE_MAP_FORMAT_VERSION, AFFINE_MAP_PARAMS: params}}
