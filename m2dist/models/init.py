"""Initialisation of the dense layers, shared by every model (spec §2.5 item 2, §7.7).

Each module initialises itself on construction with these helpers, so a model built on the meta
device and materialised later (``to_empty`` + ``reset``) follows the same rules.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# HF BERT's _init_weights: every nn.Linear and nn.Embedding is N(0, 0.02), biases zero.
PAPER_STD = 0.02


@torch.no_grad()
def init_linear_(layer: nn.Module, init: str) -> None:
    """nn.Linear (or a patch-embedding Conv2d): "paper" N(0, 0.02); "variance_preserving" N(0, 1/fan_in)."""
    fan_in = layer.weight[0].numel()
    std = PAPER_STD if init == "paper" else 1.0 / math.sqrt(fan_in)
    layer.weight.normal_(0.0, std)
    if getattr(layer, "bias", None) is not None:
        layer.bias.zero_()


@torch.no_grad()
def init_embedding_(embedding: nn.Embedding) -> None:
    embedding.weight.normal_(0.0, PAPER_STD)
