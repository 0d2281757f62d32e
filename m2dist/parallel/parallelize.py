"""``parallelize(model, axis, rank, size)``: apply one mesh axis of the plan to a single-device model, in place.

For every layer the plan names (``plan.layer_plans``), in two passes so that a refusal leaves the model untouched:

1. check: the layer's own refusals (``AxisPlan.check``) and that ``size`` divides each ``local`` attribute;
2. wrap each planned submodule's forward (``styles``; they read the layer's full sizes), cut every planned parameter
   and buffer to this rank's piece (``sharding.shard_tensor_``; tied tensors stay tied), set the ``local``
   attributes to their per-rank values, and bring the shape attributes of the torch / Monarch leaves whose weights
   were cut (``in_features``, ``num_embeddings``, ``nblocks``, ...) in line with the new weights.

Parameter names are unchanged, so the plan's ``{state-dict name: ShardSpec}`` holds for the result.
"""

from __future__ import annotations

import operator

from torch import nn

from m2dist.parallel.plan import has_tensor, layer_plans
from m2dist.parallel.sharding import shard_tensor_


def _resize_leaf(module: nn.Module) -> None:
    """Shape attributes of a leaf whose weight was cut, from the weight (forward paths read some of them)."""
    from m2dist.monarch.structured import StructuredLinear

    w = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.Embedding):
        module.num_embeddings = w.shape[0]
    elif isinstance(module, nn.Conv1d) and module.groups == module.in_channels == module.out_channels:  # depthwise
        module.in_channels = module.out_channels = module.groups = w.shape[0]
    elif isinstance(module, StructuredLinear) and w is not None and w.dim() == 3:  # block-diagonal (nb, q, p)
        module.nblocks = w.shape[0]
        module.out_features, module.in_features = w.shape[0] * w.shape[1], w.shape[0] * w.shape[2]


def _set_attr(layer: nn.Module, path: str, value) -> None:
    owner, _, attr = path.rpartition(".")
    setattr(layer.get_submodule(owner), attr, value)


def parallelize(model: nn.Module, axis: str, rank: int, size: int) -> nn.Module:
    layers = list(layer_plans(model, axis))
    for prefix, layer, plan in layers:
        if plan.check is not None:
            plan.check(layer, size)
        for path, field in plan.local.items():
            value = operator.attrgetter(path)(layer)
            if value % size:
                raise ValueError(f"{field}={value} is not divisible by parallel.tensor={size} "
                                 f"({type(layer).__name__} at {prefix.rstrip('.') or 'the model'})")
    done: dict = {}
    for prefix, layer, plan in layers:
        for path, style in plan.each_style():
            if path and not _has_module(layer, path):
                continue  # an optional submodule this layer does not have (mlp_rev of a causal filter)
            style.apply(layer, path, plan, rank, size)
        owners = set()
        for name, spec in plan.params.items():
            if has_tensor(layer, name):
                shard_tensor_(layer, name, spec, rank, size, done)
                owners.add(name.rpartition(".")[0])
        for path in plan.local:
            _set_attr(layer, path, operator.attrgetter(path)(layer) // size)
        for owner in owners:
            _resize_leaf(layer.get_submodule(owner))
    return model


def _has_module(layer: nn.Module, path: str) -> bool:
    try:
        layer.get_submodule(path)
    except AttributeError:
        return False
    return True
