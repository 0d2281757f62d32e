"""The optimizer: a torch AdamW over the model's param groups."""

from __future__ import annotations

import torch
from torch import nn

from m2dist.config.schema import Config


def build_optimizer(model: nn.Module, cfg: Config, device: str) -> torch.optim.Optimizer:
    """AdamW over the model's param groups. A torch AdamW, not a ds_config optimizer: DeepSpeed would JIT-compile its
    fused/CPU Adam (stack-facts §1). Fused on a GPU (one kernel per step instead of a handful per tensor); the default
    foreach path on CPU."""
    from m2dist.models import optimizer_groups

    oc = cfg.optimizer
    return torch.optim.AdamW(
        optimizer_groups(model, oc), lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay,
        fused=device.startswith("cuda") or None,
    )
