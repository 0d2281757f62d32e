"""The model as it is trained: the single-device model, built from the same seed on every rank, then kernels, tensor
parallelism, context parallelism and the per-layer options applied from outside it."""

from __future__ import annotations

import torch
from torch import nn

from m2dist.config.schema import Config
from m2dist.train.layer_options import apply_layer_options


def build_model_for_training(cfg: Config, groups) -> nn.Module:
    from m2dist.kernels import accelerate
    from m2dist.models import build_model

    # Same seed on every rank: every rank builds the same full model before sharding/partitioning.
    torch.manual_seed(cfg.trainer.seed)
    model = accelerate(build_model(cfg.model))  # fused kernels where they apply, before tensor parallelism
    if cfg.parallel.tensor > 1:
        try:
            from m2dist.parallel.tensor_parallel import apply_tensor_parallel
        except ImportError as exc:
            raise RuntimeError(
                f"parallel.tensor={cfg.parallel.tensor} needs m2dist.parallel.tensor_parallel.apply_tensor_parallel, "
                f"which is not available ({exc}); run with parallel.tensor=1"
            ) from None
        model = apply_tensor_parallel(model, cfg.model)
    if cfg.parallel.context > 1:
        from m2dist.parallel.context_parallel import apply_context_parallel

        model = apply_context_parallel(model)  # after TP: its styles read the TP-local sizes
    return apply_layer_options(model, cfg)
