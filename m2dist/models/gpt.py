"""GPT-style causal language model (spec §3), for M2-GPT and the GPT baseline.

    x = Dropout(E_tok[ids] [+ E_pos])  →  pre-norm blocks  →  final LN  →  lm_head (tied to E_tok)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from m2dist.config.model import ModelConfig
from m2dist.models.init import init_embedding_, init_linear_


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, blocks: list[nn.Module]):
        super().__init__()
        h = cfg.hidden_size
        self.config = cfg
        self.token = nn.Embedding(cfg.vocab_size, h)
        self.position = nn.Embedding(cfg.max_seq_len, h) if cfg.position_embeddings else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(h, cfg.vocab_size, bias=False)
        for table in (self.token, self.position):
            if table is not None:
                init_embedding_(table)
        init_linear_(self.lm_head, "paper")
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.token(input_ids)
        if self.position is not None:
            # Looked up (not sliced) so that context parallelism can offset a rank's positions (a hook on it).
            x = x + self.position(torch.arange(input_ids.shape[1], device=input_ids.device))
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_embeddings(self.embed(input_ids), attention_mask)

    def forward_embeddings(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits from token embeddings (B, L, H); the causality test differentiates through this."""
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.lm_head(self.norm(x))
