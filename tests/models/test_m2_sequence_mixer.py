"""The M2 sequence mixer and its implicit filter against a float64 re-statement of spec §1.6,
written with explicit loops and dense Toeplitz matrices instead of Conv1d and FFTs."""

from __future__ import annotations

import math

import pytest
import torch

from m2dist.models.hyena_filter import ImplicitFilter
from m2dist.models.sequence_mixer import M2SequenceMixer


def toeplitz(k_fwd, k_rev):
    """T[h, t, s] = k_fwd[h, t−s] for s ≤ t; k_rev[h, s−t−1] for s > t (zero when causal)."""
    channels, length = k_fwd.shape
    T = torch.zeros(channels, length, length, dtype=k_fwd.dtype)
    for t in range(length):
        for s in range(length):
            if s <= t:
                T[:, t, s] = k_fwd[:, t - s]
            elif k_rev is not None:
                T[:, t, s] = k_rev[:, s - t - 1]
    return T


def reference_mixer(mixer: M2SequenceMixer, u: torch.Tensor) -> torch.Tensor:
    h = mixer.hidden_size
    batch, length, _ = u.shape
    z = u @ mixer.in_proj.weight.T + mixer.in_proj.bias
    w, b = mixer.short_conv.weight[:, 0, :], mixer.short_conv.bias  # (3H, k)
    k = w.shape[1]
    c = b.expand(batch, length, 3 * h).clone()
    for t in range(length):
        for j in range(k):  # c[t] = Σ_j w[j] · z[t − (k−1) + j]: causal, left zero padding
            src = t - (k - 1) + j
            if src >= 0:
                c[:, t] += w[:, j] * z[:, src]
    x1, x2, v = c[..., :h], c[..., h:2 * h], c[..., 2 * h:]
    v = v * x1
    y = torch.einsum("hts,bsh->bth", toeplitz(*mixer.filter(length)), v) + mixer.filter.D * v
    y = y * x2
    if mixer.residual_filter is not None:
        T2 = toeplitz(*mixer.residual_filter(length))
        y = y + torch.einsum("hts,bsh->bth", T2, u) + mixer.residual_filter.D * u
    return y @ mixer.out_proj.weight.T + mixer.out_proj.bias


@pytest.mark.parametrize("causal,residual", [(False, True), (True, False), (True, True)])
def test_mixer_matches_spec_dataflow(causal, residual):
    torch.manual_seed(0)
    mixer = M2SequenceMixer(8, 32, causal=causal, filter_order=8, residual_long_conv=residual).double()
    with torch.no_grad():  # make every path visible: the paper init's 0.02-scaled projections are tiny
        for linear in (mixer.in_proj, mixer.out_proj):
            linear.weight.mul_(10)
    u = torch.randn(2, 19, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer(u), reference_mixer(mixer, u), rtol=1e-10, atol=1e-12)
    assert (mixer.filter.mlp_rev is None) == causal


def test_filter_matches_spec_formulas():
    torch.manual_seed(0)
    channels, l_max, emb_dim = 6, 20, 5
    filt = ImplicitFilter(channels, l_max, order=8, emb_dim=emb_dim, w=10.0, bidirectional=True).double()
    i = torch.arange(l_max, dtype=torch.float64)
    for f_idx, f in enumerate([1e-4, 1.0]):  # bands (emb_dim−1)/2 = 2 at f ∈ {1e-4, 1}
        angle = f * 2 * math.pi * i / l_max
        # z is computed in fp32 (then trained as a parameter): compare at fp32 accuracy.
        torch.testing.assert_close(filt.z[:, 1 + f_idx].detach(), torch.cos(angle), rtol=0, atol=1e-6)
        torch.testing.assert_close(filt.z[:, 3 + f_idx].detach(), -torch.sin(angle), rtol=0, atol=1e-6)
    torch.testing.assert_close(filt.z[:, 0].detach(), i / (l_max - 1), rtol=0, atol=1e-6)
    assert torch.all(filt.freq == 10.0)
    delta = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, channels, dtype=torch.float64)
    assert delta[0] == pytest.approx(-3.07, abs=0.01) and delta[-1] == pytest.approx(-15.35, abs=0.01)

    def mlp(m, x):  # Linear → sin(freq·x), three times, then the bias-free output layer
        for layer in m.layers:
            x = torch.sin(filt.freq * (x @ layer.weight.T + layer.bias))
        return x @ m.out.weight.T

    length = 13
    t = (i[:length] / (l_max - 1))[:, None]
    k_fwd, k_rev = filt(length)
    zs = filt.z[:length]
    torch.testing.assert_close(k_fwd, (mlp(filt.mlp_fwd, zs) * torch.exp(-t * delta.abs())).T)
    torch.testing.assert_close(k_rev, (mlp(filt.mlp_rev, zs) * torch.exp(-t * delta.abs())).T)
    with pytest.raises(ValueError, match="l_max"):
        filt(l_max + 1)


def test_filter_channels_are_separable():
    """Slicing out.weight rows, decay and D gives exactly the filters of those channels (the
    contract channel-sharded tensor parallelism relies on)."""
    torch.manual_seed(0)
    full = ImplicitFilter(8, 16, order=8, bidirectional=True).double()
    idx = torch.tensor([4, 5, 6, 7])
    part = ImplicitFilter(4, 16, order=8, bidirectional=True).double()
    state = {k: v[idx] if k in ("mlp_fwd.out.weight", "mlp_rev.out.weight", "D") else v
             for k, v in full.state_dict().items()}
    part.load_state_dict(state)
    part.decay.copy_(full.decay[idx])
    for a, b in zip(full(11), part(11)):
        torch.testing.assert_close(a[idx], b)
