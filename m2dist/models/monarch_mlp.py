"""M2 dimension mixer: GLU MLP with Monarch (block-diagonal by default) matrices (spec §1.5).

    g = gated_proj(h)                     H → 2I, no bias; g[..., :I] is the gate, g[..., I:] the value
    a = dropout(GELU(g[:I]) ⊙ g[I:])      act: GeluGLU
    out = out_proj(a)                     I → H, with bias

Parameters: gated_proj.weight (nblocks, 2I/nblocks, H/nblocks), out_proj.weight
(nblocks, H/nblocks, I/nblocks), out_proj.bias (H,) for the block-diagonal type; weight1/weight2
for mlp_type="monarch". The gate/value split order matters: with 4 blocks the gate comes from
blocks 0–1 and the value from blocks 2–3, so output halves depend on input quarters {0,2} and {1,3}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2dist.monarch import BlockDiagonalLinear, MonarchLinear

MONARCH_TYPES = {"blockdiag": BlockDiagonalLinear, "monarch": MonarchLinear}


class GeluGLU(nn.Module):
    """``gelu(g[..., :I]) * g[..., I:]`` for g (..., 2I): exact (erf) GELU of the gate times the value.
    Parameter-free, and a module so that code outside the model can swap it (the kernel converter,
    ``m2dist.kernels.accelerate``, puts a fused one in its place)."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        gate, value = g.chunk(2, dim=-1)
        return F.gelu(gate) * value


class MonarchGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, nblocks: int = 4, mlp_type: str = "blockdiag",
                 dropout: float = 0.0, init: str = "paper"):
        super().__init__()
        if mlp_type not in MONARCH_TYPES:
            raise ValueError(f"mlp_type must be one of {sorted(MONARCH_TYPES)}, got {mlp_type!r}")
        layer = MONARCH_TYPES[mlp_type]
        self.intermediate_size = intermediate_size
        self.gated_proj = layer(hidden_size, 2 * intermediate_size, nblocks, bias=False, init=init)
        self.act = GeluGLU()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = layer(intermediate_size, hidden_size, nblocks, bias=True, init=init)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.act(self.gated_proj(h))))
