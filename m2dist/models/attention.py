"""Multi-head self-attention for the Transformer baselines, through torch SDPA.

Parameters: qkv_proj nn.Linear(H, 3H) (output order q | k | v, heads contiguous), out_proj nn.Linear(H, H).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from m2dist.models.init import init_linear_


class SelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, *, causal: bool, dropout: float = 0.0,
                 init: str = "paper"):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.num_heads, self.causal, self.dropout = num_heads, causal, dropout
        self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        init_linear_(self.qkv_proj, init)
        init_linear_(self.out_proj, init)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].bool()  # keys that are real tokens
            if self.causal:
                mask = mask & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            # A pad query would otherwise see no key at all (NaN); let every query see itself.
            mask = mask | torch.eye(length, dtype=torch.bool, device=x.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and mask is None,
        )
        # -1, not the input width: under tensor parallelism num_heads is this rank's share (m2dist/parallel/plan.py).
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1))
