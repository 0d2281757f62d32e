"""Training precision (``deepspeed.precision``): the mode, the dtype inputs are fed in, and the ds_config section
that sets it."""

from __future__ import annotations

import torch

from m2dist.config.schema import Config


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


def ds_precision_section(cfg: Config, device: str) -> dict:
    """The generated ds_config's precision keys (none for fp32)."""
    mode = precision_mode(cfg, device)
    if mode == "bf16":
        return {"bf16": {"enabled": True}}
    if mode == "bf16_autocast":
        # An empty list of "lower precision safe" modules keeps every gradient, and its reduction, in fp32
        # (DeepSpeed's default would all-reduce Linear/Conv gradients in bf16).
        return {"torch_autocast": {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}}
    return {}
