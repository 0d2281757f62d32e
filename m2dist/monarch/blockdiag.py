"""Order-1 Monarch: a block-diagonal linear map (spec §1.1), the dimension mixer's layer in M2."""

from __future__ import annotations

import torch
from torch import nn

from m2dist.kernels import dispatch

from m2dist.monarch.structured import StructuredLinear, init_bias_, init_block_weight_


class BlockDiagonalLinear(StructuredLinear):
    """``y = BD(weight) x + bias`` with ``nblocks`` contiguous blocks.

    ``weight`` has shape ``(nblocks, out_features // nblocks, in_features // nblocks)``: block ``b``
    maps input chunk ``x[b*p:(b+1)*p]`` to output chunk ``y[b*q:(b+1)*q]``. Tensor parallelism shards
    this weight along dim 0 (whole blocks per rank), so keep this layout.
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True,
                 init: str = "paper"):
        super().__init__(in_features, out_features, nblocks, bias, init)
        self.weight = nn.Parameter(torch.empty(nblocks, out_features // nblocks, in_features // nblocks))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_block_weight_(self.weight, self.in_features // self.nblocks, self.init)
        if self.bias is not None:
            init_bias_(self.bias, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = dispatch.block_diagonal(x, self.weight, self.bias)  # Triton kernel on GPU, else None
        if y is not None:
            return y
        nb, q, p = self.weight.shape
        # (..., nb*p) -> (..., nb, p); one batched GEMM over the block index.
        y = torch.einsum("...bp,bqp->...bq", x.reshape(*x.shape[:-1], nb, p), self.weight)
        y = y.reshape(*x.shape[:-1], nb * q)
        return y if self.bias is None else y + self.bias

    def to_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix ``W`` with ``self(x) == x @ W.T + bias``."""
        return torch.block_diag(*self.weight.unbind(0))

