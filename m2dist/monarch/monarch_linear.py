"""Order-2 Monarch: two block-diagonal factors with transpose permutations (spec §1.2).

For input ``x`` of size ``n = nblocks*p`` and output size ``m = nblocks*s``:
  1. ``z = BD(weight1) x``            (nblocks blocks, size ``k*q``)
  2. ``z'[j*r + i] = z[i*l + j]``     (read z as an r x l matrix, transpose)
  3. ``w = BD(weight2) z'``           (nblocks blocks)
  4. ``out[i*l + j] = w[j*s + i]``    (read w as l x s, transpose)
with ``k = l = nblocks``. As in HazyResearch/fly, the square middle factor sits on the smaller
side: ``weight1`` is ``(nb, p, p)`` and ``weight2`` is ``(nb, s, p)`` when ``n < m``, otherwise
``weight1`` is ``(nb, s, p)`` and ``weight2`` is ``(nb, s, s)``. In the square case ``n = b*b`` with
``nblocks = b`` this is ``P BD(weight2) P BD(weight1)`` with P the b x b transpose permutation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from m2dist.monarch.structured import StructuredLinear, init_bias_, init_block_weight_


def monarch_einsum(x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The layer in PyTorch: two batched matmuls (einsum) with the permutations as transposes."""
    batch = x.shape[:-1]
    k, q, p = weight1.shape
    l, s, r = weight2.shape
    z = torch.einsum("...kp,kqp->...kq", x.reshape(*batch, k, p), weight1)
    # z as (r, l) row-major -> transpose -> (l, r): block j of the second factor reads z[i*l + j].
    z = z.reshape(*batch, r, l).transpose(-1, -2)
    w = torch.einsum("...lr,lsr->...ls", z, weight2)
    out = w.transpose(-1, -2).reshape(*batch, s * l)
    return out if bias is None else out + bias


class MonarchProduct(nn.Module):
    """``monarch_einsum`` as a parameter-free module, so that code outside the model can swap it (the kernel
    converter, ``m2dist.kernels.accelerate``), as ``BlockDiagonalProduct``."""

    def forward(self, x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return monarch_einsum(x, weight1, weight2, bias)


class MonarchLinear(StructuredLinear):
    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True,
                 init: str = "paper"):
        super().__init__(in_features, out_features, nblocks, bias, init)
        p, s = in_features // nblocks, out_features // nblocks
        mid = p if in_features < out_features else s  # q == r: the size between the two factors
        self.weight1 = nn.Parameter(torch.empty(nblocks, mid, p))
        self.weight2 = nn.Parameter(torch.empty(nblocks, s, mid))
        self.product = MonarchProduct()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_block_weight_(self.weight1, self.weight1.shape[-1], self.init)
        init_block_weight_(self.weight2, self.weight2.shape[-1], self.init)
        if self.bias is not None:
            init_bias_(self.bias, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x, self.weight1, self.weight2, self.bias)

    def to_dense(self) -> torch.Tensor:
        """``(out_features, in_features)`` matrix, built from explicit permutation matrices."""
        k, q, _ = self.weight1.shape
        l, s, r = self.weight2.shape
        mid = torch.arange(k * q)
        # z'[j*r + i] = z[i*l + j]  =>  row (j*r + i) of P_mid picks column (i*l + j).
        i, j = mid % r, mid // r
        p_mid = torch.zeros(k * q, k * q, dtype=self.weight1.dtype, device=self.weight1.device)
        p_mid[mid, i * l + j] = 1
        out = torch.arange(l * s)
        # out[i*l + j] = w[j*s + i]
        i, j = out // l, out % l
        p_out = torch.zeros(l * s, l * s, dtype=self.weight1.dtype, device=self.weight1.device)
        p_out[out, j * s + i] = 1
        bd1 = torch.block_diag(*self.weight1.unbind(0))
        bd2 = torch.block_diag(*self.weight2.unbind(0))
        return p_out @ bd2 @ p_mid @ bd1
