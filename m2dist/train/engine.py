"""The DeepSpeed engine, assembled: the model as trained, its optimizer and LR schedule, the generated ds_config."""

from __future__ import annotations

from typing import Any

from torch import nn

from m2dist.config.schema import Config


def build_engine(cfg: Config, groups, device: str, load_universal: bool = False) -> tuple[Any, nn.Module, dict]:
    import deepspeed

    from m2dist.train.ds_config import build_ds_config
    from m2dist.train.model import build_model_for_training
    from m2dist.train.optimizer import build_optimizer
    from m2dist.train.schedule import build_scheduler
    from m2dist.train.zero_grad_norm import install_zero_grad_norm

    install_zero_grad_norm()

    model = build_model_for_training(cfg, groups)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.trainer.max_steps)
    ds_config = build_ds_config(cfg, groups.data_size, device, load_universal=load_universal)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        # The mpu's data-parallel group is DP x CP (groups.py); with TP = 1 that is the world, DeepSpeed's default.
        mpu=groups if groups.tensor_size > 1 else None,
    )
    return engine, model, ds_config
