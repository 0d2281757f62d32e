"""Residual blocks. A token mixer is called as ``mixer(x, attention_mask)``, a channel mixer as ``mlp(x)``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class PreNormBlock(nn.Module):
    """GPT/ViT style: ``x += mixer(LN(x)); x += mlp(LN(x))`` (Hyena's block, M2-GPT and M2-ViT)."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module, hidden_size: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.mixer = nn.LayerNorm(hidden_size, eps=eps), mixer
        self.norm2, self.mlp = nn.LayerNorm(hidden_size, eps=eps), mlp
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.dropout(self.mixer(self.norm1(x), attention_mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


class M2BertLayer(nn.Module):
    """M2-BERT (spec §2.1): ``h = mixer(x); x' = LN(h + mlp(h))``. No skip around the mixer: its
    residual long convolution carries x instead."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module, hidden_size: int, eps: float):
        super().__init__()
        self.mixer, self.mlp = mixer, mlp
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.mixer(x, attention_mask)
        return self.norm(h + self.mlp(h))


class PostNormBlock(nn.Module):
    """BERT baseline: ``x = LN(x + attn(x)); x = LN(x + mlp(x))``."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module, hidden_size: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.mixer, self.norm1 = mixer, nn.LayerNorm(hidden_size, eps=eps)
        self.mlp, self.norm2 = mlp, nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.mixer(x, attention_mask)))
        return self.norm2(x + self.dropout(self.mlp(x)))
