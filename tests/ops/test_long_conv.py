"""long_conv against a naive O(L²) float64 loop over the definition."""

from __future__ import annotations

import pytest
import torch

from m2dist.ops import long_conv


def naive_long_conv(u, k_fwd, k_rev=None, skip=None):
    u, k_fwd = u.double(), k_fwd.double()
    length = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(length):
        for s in range(length):
            if s <= t:
                y[..., t] += k_fwd[:, t - s] * u[..., s]
            elif k_rev is not None:
                y[..., t] += k_rev.double()[:, s - t - 1] * u[..., s]
    if skip is not None:
        y += skip.double()[:, None] * u
    return y


# Round-off is relative to the sum of |terms| (about L·3² for unit normals): float64 ~1e-16, fp32 ~1e-7.
TOLERANCE_PER_TAP = {torch.float64: 1e-13, torch.float32: 2e-5}


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33, 50])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_skip", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_naive_loop(length, bidirectional, with_skip, dtype):
    g = torch.Generator().manual_seed(length)
    batch, channels = 2, 3
    u = torch.randn(batch, channels, length, generator=g, dtype=torch.float64)
    k_fwd = torch.randn(channels, length, generator=g, dtype=torch.float64)
    k_rev = torch.randn(channels, length, generator=g, dtype=torch.float64) if bidirectional else None
    skip = torch.randn(channels, generator=g, dtype=torch.float64) if with_skip else None
    cast = [None if t is None else t.to(dtype) for t in (u, k_fwd, k_rev, skip)]
    y = long_conv(*cast)
    assert y.dtype == dtype and y.shape == u.shape
    expected = naive_long_conv(*cast)
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=TOLERANCE_PER_TAP[dtype] * length)


def test_causal_output_ignores_the_future_and_never_wraps():
    length = 12
    u = torch.zeros(1, 1, length)
    u[..., -1] = 1.0  # an impulse at the last position
    k = torch.ones(1, length)
    y = long_conv(u, k)
    assert torch.all(y[..., :-1] == 0), "a causal conv must not move the last input onto earlier outputs"
    y = long_conv(u, k, k_rev=torch.ones(1, length))
    assert torch.all(y[..., :-1] != 0)


def test_bf16_input_runs_in_fp32_and_returns_bf16():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 4, 64, generator=g)
    k = torch.randn(4, 64, generator=g) / 8
    y = long_conv(u.bfloat16(), k, k, torch.ones(4))
    assert y.dtype == torch.bfloat16
    ref = naive_long_conv(u.bfloat16().float(), k, k, torch.ones(4))
    # Only the input and output roundings to bf16 (2^-8 relative) remain.
    assert ((y.double() - ref).norm() / ref.norm()).item() < 8e-3


def test_gradients_match_naive_loop():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
               for shape in [(2, 3, 9), (3, 9), (3, 9), (3,)]]
    grad_out = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(long_conv(*tensors), tensors, grad_out)
    grads_ref = torch.autograd.grad(naive_long_conv(*tensors), tensors, grad_out)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="k_fwd"):
        long_conv(torch.randn(1, 2, 8), torch.randn(2, 7))
    with pytest.raises(ValueError, match="k_rev"):
        long_conv(torch.randn(1, 2, 8), torch.randn(2, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"\(B, H, L\)"):
        long_conv(torch.randn(2, 8), torch.randn(2, 8))
