"""Parameter groups for the optimizer, and parameter counting."""

from __future__ import annotations

from torch import nn

from m2dist.models.hyena_filter import ImplicitFilter


def _filter_parameter_ids(model: nn.Module) -> set[int]:
    """Everything that generates the implicit filters (z, freq, filter MLPs), not the D skips."""
    ids = set()
    for module in model.modules():
        if isinstance(module, ImplicitFilter):
            ids.update(id(p) for name, p in module.named_parameters() if name != "D")
    return ids


def _embedding_parameter_ids(model: nn.Module) -> set[int]:
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    position = getattr(model, "position", None)
    if isinstance(position, nn.Parameter):  # ViT's learned position table
        ids.add(id(position))
    return ids


def optimizer_groups(model: nn.Module, optimizer_config) -> list[dict]:
    """Torch param groups: "decay" (matrices, Monarch blocks, conv weights), "no_decay" (biases,
    norms, D skips, embedding tables) and "filter" (implicit-filter parameters, with
    ``filter_lr`` (None: ``lr``) and ``filter_weight_decay``). Shared (tied) parameters appear once.

    The filter group is built from the live modules, so it survives copies of layers (the public
    code's deepcopy dropped its per-parameter settings, spec §2.5).
    """
    filter_ids, embedding_ids = _filter_parameter_ids(model), _embedding_parameter_ids(model)
    decay, no_decay, filters = [], [], []
    for p in model.parameters():  # deduplicates tied weights
        if not p.requires_grad:
            continue
        if id(p) in filter_ids:
            filters.append(p)
        elif p.ndim < 2 or id(p) in embedding_ids:
            no_decay.append(p)
        else:
            decay.append(p)
    oc = optimizer_config
    filter_lr = oc.lr if oc.filter_lr is None else oc.filter_lr
    groups = [
        {"name": "decay", "params": decay, "lr": oc.lr, "weight_decay": oc.weight_decay},
        {"name": "no_decay", "params": no_decay, "lr": oc.lr, "weight_decay": 0.0},
        {"name": "filter", "params": filters, "lr": filter_lr, "weight_decay": oc.filter_weight_decay},
    ]
    return [g for g in groups if g["params"]]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, tied weights counted once (works on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
