"""Transformer baselines' MLP: Linear(H→I) → GELU → Linear(I→H)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2dist.models.init import init_linear_


class DenseMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.0, init: str = "paper"):
        super().__init__()
        self.in_proj = nn.Linear(hidden_size, intermediate_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(intermediate_size, hidden_size)
        init_linear_(self.in_proj, init)
        init_linear_(self.out_proj, init)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(F.gelu(self.in_proj(h))))
