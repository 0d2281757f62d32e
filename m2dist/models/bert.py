"""BERT-style masked language model (spec §2.1), for M2-BERT and the BERT baseline.

    x = Dropout(LN(E_tok[ids] + E_type[0] + E_pos[0..L−1]))
    x = layer(x, attention_mask) for each layer
    logits = LN(GELU(dense(x))) · E_tokᵀ + bias          decoder tied to the token embedding

The model returns logits at every position; the loss picks the masked ones.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from m2dist.config.model import ModelConfig
from m2dist.models.init import init_embedding_, init_linear_


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.token = nn.Embedding(cfg.vocab_size, h)
        self.position = nn.Embedding(cfg.max_seq_len, h) if cfg.position_embeddings else None
        # Pretraining uses type 0 everywhere; the table exists so checkpoints and counts match BERT's.
        self.token_type = nn.Embedding(cfg.type_vocab_size, h) if cfg.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        for table in (self.token, self.position, self.token_type):
            if table is not None:
                init_embedding_(table)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.token(input_ids)
        if self.position is not None:
            # Looked up (not sliced) so that context parallelism can offset a rank's positions (a hook on it).
            x = x + self.position(torch.arange(input_ids.shape[1], device=input_ids.device))
        if self.token_type is not None:
            x = x + self.token_type.weight[0]
        return self.dropout(self.norm(x))


class MaskedLMHead(nn.Module):
    """Transform (dense → GELU → LN) then the vocabulary decoder; ``decoder.weight`` is tied."""

    def __init__(self, cfg: ModelConfig, token_embedding: nn.Embedding):
        super().__init__()
        h = cfg.hidden_size
        self.dense = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(h, cfg.vocab_size)
        init_linear_(self.dense, cfg.init)
        init_linear_(self.decoder, "paper")
        if cfg.tie_embeddings:
            self.decoder.weight = token_embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x))))


class BertForMaskedLM(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: list[nn.Module]):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(layers)
        self.head = MaskedLMHead(cfg, self.embeddings.token)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return self.head(x)
