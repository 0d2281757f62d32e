"""Monarch layers against their dense matrices (built by to_dense from block_diag and explicit
permutation matrices, independently of the bmm/reshape forward)."""

from __future__ import annotations

import math

import pytest
import torch

from m2dist.monarch import BlockDiagonalLinear, MonarchLinear

LAYERS = [BlockDiagonalLinear, MonarchLinear]


def _random_shapes(seed: int, count: int) -> list[tuple[int, int, int, bool, tuple[int, ...]]]:
    g = torch.Generator().manual_seed(seed)
    shapes = []
    for _ in range(count):
        nblocks = int(torch.randint(1, 6, (), generator=g))
        p, s = (int(v) for v in torch.randint(1, 7, (2,), generator=g))
        batch = tuple(int(v) for v in torch.randint(1, 4, (int(torch.randint(1, 3, (), generator=g)),), generator=g))
        shapes.append((nblocks * p, nblocks * s, nblocks, bool(torch.randint(0, 2, (), generator=g)), batch))
    return shapes


@pytest.mark.parametrize("layer_cls", LAYERS)
@pytest.mark.parametrize("in_features,out_features,nblocks,bias,batch", _random_shapes(0, 8) + [(16, 16, 4, True, (3,))])
def test_forward_and_gradients_match_dense(layer_cls, in_features, out_features, nblocks, bias, batch):
    torch.manual_seed(1)
    layer = layer_cls(in_features, out_features, nblocks, bias=bias).double()
    x = torch.randn(*batch, in_features, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(*batch, out_features, dtype=torch.float64)

    y = layer(x)
    dense = layer.to_dense()
    assert dense.shape == (out_features, in_features)
    y_ref = x @ dense.T + (layer.bias if bias else 0)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)

    params = [x, *layer.parameters()]
    grads = torch.autograd.grad(y, params, grad_out)
    grads_ref = torch.autograd.grad(y_ref, params, grad_out)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_blockdiag_weight_layout_is_contiguous_blocks():
    layer = BlockDiagonalLinear(12, 8, 4, bias=False)
    assert layer.weight.shape == (4, 2, 3)
    dense = layer.to_dense()
    # Block b maps input chunk [3b, 3b+3) to output chunk [2b, 2b+2); everything else is zero.
    for b in range(4):
        torch.testing.assert_close(dense[2 * b:2 * b + 2, 3 * b:3 * b + 3], layer.weight[b].detach())
    mask = torch.block_diag(*[torch.ones(2, 3)] * 4).bool()
    assert torch.all(dense[~mask] == 0)


def test_square_monarch_is_P_R2_P_R1():
    """n = b², nblocks = b: M = P·BD(W2)·P·BD(W1) with P the b×b transpose (Dao et al. 2022)."""
    b = 4
    layer = MonarchLinear(b * b, b * b, b, bias=False).double()
    perm = torch.zeros(b * b, b * b, dtype=torch.float64)
    for i in range(b):
        for j in range(b):
            perm[i * b + j, j * b + i] = 1  # reshape to b×b, transpose, flatten
    bd1 = torch.block_diag(*layer.weight1.detach())
    bd2 = torch.block_diag(*layer.weight2.detach())
    x = torch.randn(5, b * b, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ (perm @ bd2 @ perm @ bd1).T)


@pytest.mark.parametrize("layer_cls", LAYERS)
def test_rejects_sizes_not_divisible_by_nblocks(layer_cls):
    with pytest.raises(ValueError, match=r"in_features=10.*nblocks=4"):
        layer_cls(10, 8, 4)
    with pytest.raises(ValueError, match=r"out_features=6.*nblocks=4"):
        layer_cls(8, 6, 4)
    with pytest.raises(ValueError, match="init"):
        layer_cls(8, 8, 4, init="xavier")


@pytest.mark.parametrize("layer_cls", LAYERS)
def test_initialisation(layer_cls):
    torch.manual_seed(0)
    paper = layer_cls(512, 1024, 4, init="paper")
    vp = layer_cls(512, 1024, 4, init="variance_preserving")
    for name, w in paper.named_parameters():
        if name.startswith("weight"):  # Kaiming-uniform with the block fan-in: U(±1/√fan_in)
            assert w.abs().max() <= 1 / math.sqrt(w.shape[-1])
            assert w.abs().max() > 0.95 / math.sqrt(w.shape[-1])
    assert paper.bias.abs().max() <= 1 / math.sqrt(1024)
    for name, w in vp.named_parameters():
        if name.startswith("weight"):  # N(0, 1/fan_in)
            assert abs(w.std().item() * math.sqrt(w.shape[-1]) - 1) < 0.05
    assert torch.all(vp.bias == 0)
    x = torch.randn(4096, 512)
    assert abs(vp(x).var().item() - 1) < 0.1  # variance preserved through the layer
