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


def future_leak(conv, length: int, dtype: torch.dtype, seed: int = 0) -> float:
    """How much outputs at positions ≤ t move when only inputs after t change, relative to the output's scale.

    Random inputs and kernels (an impulse through an all-ones kernel can come out exactly 0 on one CPU's vector
    path and 1e-8 on another's), every split point t. The scale is the largest sum of |terms| of an output,
    Σ_s |k[t−s]|·|u[s]|, which is what FFT round-off is proportional to. Exact causality gives 0; FFT round-off
    gives about eps·log2(L); any real leak (wrap-around, a shifted tap) gives O(1)."""
    g = torch.Generator().manual_seed(seed)
    batch, channels = 2, 3
    u = torch.randn(batch, channels, length, generator=g, dtype=torch.float64)
    k = torch.randn(channels, length, generator=g, dtype=torch.float64)
    scale = naive_long_conv(u.abs(), k.abs()).max().item()
    y = conv(u.to(dtype), k.to(dtype)).double()
    worst = 0.0
    for t in range(length - 1):
        future = u.clone()
        future[..., t + 1:] = torch.randn(batch, channels, length - t - 1, generator=g, dtype=torch.float64)
        y_future = conv(future.to(dtype), k.to(dtype)).double()
        worst = max(worst, (y_future[..., :t + 1] - y[..., :t + 1]).abs().max().item() / scale)
    return worst


# eps·log2(2L) with margin: fp32 eps 1.2e-7 (measured ≤ 2e-7 at L=64), float64 eps 2.2e-16.
CAUSAL_LEAK_TOLERANCE = {torch.float64: 1e-13, torch.float32: 1e-5}


def _fft_conv(u, k, n, shift=0):
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return torch.roll(y, -shift, dims=-1)[..., : u.shape[-1]]


# Real leaks the check must catch: an FFT of size L (circular), padding one short of 2L−1 (the longest lag
# wraps onto position 0), and an off-by-one shift (output t reads input t+1).
LEAKY_CONVS = {
    "circular": lambda u, k: _fft_conv(u, k, u.shape[-1]),
    "padding_2L-2": lambda u, k: _fft_conv(u, k, 2 * u.shape[-1] - 2),
    "shifted_by_one": lambda u, k: _fft_conv(u, k, 2 * u.shape[-1], shift=1),
}


@pytest.mark.parametrize("length", [2, 7, 12, 33, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_causal_output_ignores_the_future_and_never_wraps(length, dtype):
    leak = future_leak(long_conv, length, dtype)
    assert leak <= CAUSAL_LEAK_TOLERANCE[dtype], f"L={length}: the future moves earlier outputs by {leak:.3g}"
    # Bidirectional: the future must reach earlier outputs (the reverse kernel is really applied).
    u = torch.zeros(1, 1, length)
    u[..., -1] = 1.0
    y = long_conv(u, torch.ones(1, length), k_rev=torch.ones(1, length))
    assert torch.all(y[..., :-1].abs() > 0.5)


@pytest.mark.parametrize("name", sorted(LEAKY_CONVS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_causality_check_catches_real_leaks(name, dtype):
    leak = future_leak(LEAKY_CONVS[name], 12, dtype)
    assert leak > 1e3 * CAUSAL_LEAK_TOLERANCE[torch.float32], f"{name}: leak {leak:.3g} went unnoticed"


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
