"""ViT-style image classifier (spec §3.3), for M2-ViT and the ViT baseline.

Patches form a 1-D sequence (row-major); no CLS token; mean pooling over patches, then a linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from m2dist.config.model import ModelConfig
from m2dist.models.init import init_linear_


class PatchMean(nn.Module):
    """The mean over the patch dimension (B, N, H) -> (B, H). A module of its own so that context parallelism can
    make it a mean over every rank's patches (``m2dist.parallel.plan``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class VisionClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, blocks: list[nn.Module]):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size={cfg.image_size} is not divisible by patch_size={cfg.patch_size}")
        h = cfg.hidden_size
        self.config = cfg
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(cfg.in_channels, h, cfg.patch_size, stride=cfg.patch_size)
        self.position = nn.Parameter(torch.zeros(self.num_patches, h)) if cfg.position_embeddings else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.pool = PatchMean()
        self.head = nn.Linear(h, cfg.num_classes)
        init_linear_(self.patch_embed, cfg.init)
        init_linear_(self.head, "paper")
        if self.position is not None:
            nn.init.normal_(self.position, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, H)
        if self.position is not None:
            x = x + self.position
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.pool(self.norm(x)))
