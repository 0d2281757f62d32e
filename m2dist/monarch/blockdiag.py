"""Order-1 Monarch: a block-diagonal linear map (spec §1.1), the dimension mixer's layer in M2."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from m2dist.monarch.structured import StructuredLinear, init_bias_, init_block_weight_


def block_diagonal(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (..., nb*p) -> (..., nb*q) with weight (nb, q, p): one batched GEMM over the block index."""
    nb, q, p = weight.shape
    y = torch.einsum("...bp,bqp->...bq", x.reshape(*x.shape[:-1], nb, p), weight)
    y = y.reshape(*x.shape[:-1], nb * q)
    return y if bias is None else y + bias


class BlockDiagonalProduct(nn.Module):
    """``block_diagonal`` as a parameter-free module, so that code outside the model can swap it: the kernel
    converter (``m2dist.kernels.accelerate``) puts a Triton-backed one in its place, whatever else (tensor
    parallelism) has rewritten the layer around it."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return block_diagonal(x, weight, bias)


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
        self.product = BlockDiagonalProduct()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_block_weight_(self.weight, self.in_features // self.nblocks, self.init)
        if self.bias is not None:
            init_bias_(self.bias, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x, self.weight, self.bias)

    def to_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix ``W`` with ``self(x) == x @ W.T + bias``."""
        return torch.block_diag(*self.weight.unbind(0))
