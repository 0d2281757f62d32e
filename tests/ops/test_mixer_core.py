"""mixer_core (the PyTorch path every fused kernel is tested against) against the token-major O(L^2) float64
definition in tests/kernels/_ref.py: short conv, gates, padding mask, both long convs and skips."""

from __future__ import annotations

import pytest
import torch

from m2dist.ops import mixer_core
from tests.kernels._ref import naive_mixer_core


@pytest.mark.parametrize("bidir", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_mixer_core_matches_definition(bidir, residual, masked):
    g = torch.Generator().manual_seed(0)
    B, L, H = 2, 11, 3
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    z, w, b = rnd(B, L, 3 * H), rnd(3 * H, 1, 3), rnd(3 * H)
    filt = (rnd(H, L), rnd(H, L) if bidir else None, rnd(H))
    u, res = (rnd(B, L, H), (rnd(H, L), rnd(H, L) if bidir else None, rnd(H))) if residual else (None, None)
    keep = None
    if masked:
        keep = torch.ones(B, L, dtype=torch.float64)
        keep[1, 7:] = 0
    y = mixer_core(z, u, w, b, filt, res, keep)
    ref = naive_mixer_core(z, u, w, b, filt, res, keep)
    assert y.shape == (B, L, H)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_mixer_core_needs_residual_input_and_filter_together():
    z = torch.randn(1, 4, 6)
    filt = (torch.randn(2, 4), None, torch.randn(2))
    with pytest.raises(ValueError, match="together"):
        mixer_core(z, torch.randn(1, 4, 2), torch.randn(6, 1, 3), torch.randn(6), filt, None)
