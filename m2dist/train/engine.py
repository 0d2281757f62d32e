"""Model and DeepSpeed engine set-up: resolved model config, parallelism, activation checkpointing, compile,
the generated ds_config, AdamW with the model's param groups, and the LR schedule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from m2dist.config.schema import Config
from m2dist.utils.logging import get_logger

log = get_logger(__name__)


def resolve_model_config(cfg: Config) -> None:
    """Fill in what the model config leaves to the data: the vocabulary size follows the tokenizer unless set."""
    if cfg.model.arch in ("m2_vit", "vit") or cfg.model.vocab_size > 0:
        return
    if not cfg.data.tokenizer:
        raise ValueError("model.vocab_size is 0 and data.tokenizer is not set: one of them must give the vocabulary")
    from m2dist.data.tokenizer import tokenizer_info

    cfg.model.vocab_size = tokenizer_info(cfg.data.tokenizer).vocab_size


def precision_mode(cfg: Config, device: str) -> str:
    """``fp32``, ``bf16_autocast`` or ``bf16`` (``deepspeed.precision``; ``auto`` picks the first two by device).

    ``bf16_autocast`` (the GPU default) keeps weights, gradients and optimizer state in fp32 and runs the forward
    under ``torch.autocast(bfloat16)`` through DeepSpeed's ``torch_autocast`` section: the numerics of a plain
    PyTorch AMP loop. ``bf16`` is DeepSpeed's own mode: bf16 weights and activations everywhere (LayerNorm and the
    filter MLPs included), fp32 master weights in its optimizer wrapper. On CPU DeepSpeed has no fp16 and bf16
    matmuls are slow, so ``auto`` is fp32 there (stack-facts §2).
    """
    precision = cfg.deepspeed.precision
    if precision == "auto":
        return "bf16_autocast" if device.startswith("cuda") else "fp32"
    return precision


def input_dtype(cfg: Config, device: str) -> torch.dtype:
    """The dtype floating-point inputs (images) are fed in: the weights' dtype."""
    return torch.bfloat16 if precision_mode(cfg, device) == "bf16" else torch.float32


def layer_list(model: nn.Module, num_layers: int) -> Optional[nn.ModuleList]:
    """The model's stack of residual layers (``blocks`` or ``layers``), found structurally so that any model of
    m2dist.models (or one rewritten by tensor parallelism) works."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    return None


def _checkpoint_forward(layer: nn.Module) -> None:
    """Recompute ``layer``'s activations in the backward pass. The forward is wrapped in place rather than the
    module wrapped (torch's checkpoint_wrapper), so parameter names -- and checkpoints -- do not depend on the option.
    Non-reentrant: works with ZeRO-3's parameter hooks and with inputs that do not require grad."""
    from torch.utils.checkpoint import checkpoint

    inner = layer.forward

    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    layer.forward = forward


def apply_layer_options(model: nn.Module, cfg: Config) -> nn.Module:
    layers = layer_list(model, cfg.model.num_layers)
    if (cfg.trainer.activation_checkpointing or cfg.trainer.compile) and layers is None:
        raise ValueError("activation checkpointing / compile need the model's layer list, which was not found")
    if cfg.trainer.activation_checkpointing:
        for layer in layers:
            _checkpoint_forward(layer)
    if cfg.trainer.compile:
        # Per layer, as torchtitan does: the layers are identical, so one compiled graph is reused L times and a
        # graph break stays local to a layer.
        for layer in layers:
            layer.compile()
    return model


def build_model_for_training(cfg: Config, groups) -> nn.Module:
    from m2dist.models import build_model

    # Same seed on every rank: every rank builds the same full model before sharding/partitioning.
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model)
    if cfg.parallel.tensor > 1:
        try:
            from m2dist.parallel.tensor_parallel import apply_tensor_parallel
        except ImportError as exc:
            raise RuntimeError(
                f"parallel.tensor={cfg.parallel.tensor} needs m2dist.parallel.tensor_parallel.apply_tensor_parallel, "
                f"which is not available ({exc}); run with parallel.tensor=1"
            ) from None
        model = apply_tensor_parallel(model, cfg.model)
    return apply_layer_options(model, cfg)


def gradient_accumulation_steps(cfg: Config, data_parallel_size: int) -> int:
    t = cfg.trainer
    per_step = t.micro_batch_size * data_parallel_size
    if t.global_batch_size % per_step:
        raise ValueError(
            f"trainer.global_batch_size={t.global_batch_size} is not a multiple of "
            f"trainer.micro_batch_size={t.micro_batch_size} x data-parallel size {data_parallel_size}"
        )
    return t.global_batch_size // per_step


def build_ds_config(cfg: Config, data_parallel_size: int, device: str, load_universal: bool = False) -> dict:
    """The ds_config, generated from the m2dist config, or the user's ``deepspeed.config_file`` checked against it."""
    gas = gradient_accumulation_steps(cfg, data_parallel_size)
    batch = {
        "train_batch_size": cfg.trainer.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.trainer.micro_batch_size,
        "gradient_accumulation_steps": gas,
    }
    if cfg.deepspeed.config_file:
        with open(cfg.deepspeed.config_file) as f:
            ds = json.load(f)
        for key, value in batch.items():
            given = ds.get(key, "auto")
            if given == "auto":
                ds[key] = value
            elif int(given) != value:
                raise ValueError(
                    f"{cfg.deepspeed.config_file}: {key}={given} disagrees with the m2dist config ({value}); "
                    f"batch sizes come from trainer.global_batch_size / micro_batch_size"
                )
        if "optimizer" in ds or "scheduler" in ds:
            # m2dist passes its own AdamW (param groups, no JIT-built ops) and LR schedule.
            raise ValueError(f"{cfg.deepspeed.config_file}: remove 'optimizer'/'scheduler'; m2dist configures them")
    else:
        ds = dict(batch)
        ds["gradient_clipping"] = cfg.trainer.grad_clip
        ds["zero_optimization"] = {"stage": cfg.deepspeed.zero_stage}
        mode = precision_mode(cfg, device)
        if mode == "bf16":
            ds["bf16"] = {"enabled": True}
        elif mode == "bf16_autocast":
            # An empty list of "lower precision safe" modules keeps every gradient, and its reduction, in fp32
            # (DeepSpeed's default would all-reduce Linear/Conv gradients in bf16).
            ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
        # m2dist logs its own metrics; DeepSpeed's per-step prints would interleave with them.
        ds["steps_per_print"] = 1 << 30
        ds["wall_clock_breakdown"] = False
    if load_universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds


@dataclass
class TrainState:
    """What the loop owns besides the engine: saved in every checkpoint."""

    step: int = 0
    consumed_samples: int = 0
    tokens: int = 0


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


def build_engine(cfg: Config, groups, device: str, load_universal: bool = False) -> tuple[Any, nn.Module, dict]:
    import deepspeed

    from m2dist.train.schedule import build_scheduler

    model = build_model_for_training(cfg, groups)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.trainer.max_steps)
    ds_config = build_ds_config(cfg, groups.data_size, device, load_universal=load_universal)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        mpu=groups if groups.tensor_size > 1 else None,
    )
    return engine, model, ds_config
