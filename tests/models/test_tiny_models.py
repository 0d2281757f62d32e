"""Tiny models: forward contract, backward, causality, padding invariance, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from m2dist.models import from_preset, preset_config

TINY = ["m2-bert-tiny", "m2-gpt-tiny", "m2-vit-tiny", "bert-tiny", "gpt-tiny", "vit-tiny"]
LANGUAGE = ["m2-bert-tiny", "m2-gpt-tiny", "bert-tiny", "gpt-tiny"]


def _inputs(name: str, batch: int = 2, length: int = 24, seed: int = 0) -> torch.Tensor:
    cfg = preset_config(name)
    g = torch.Generator().manual_seed(seed)
    if cfg.arch.endswith("vit"):
        return torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    return torch.randint(1, cfg.vocab_size, (batch, length), generator=g)


@pytest.mark.parametrize("name", TINY)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = from_preset(name)
    cfg = model.config
    x = _inputs(name)
    logits = model(x)
    expected = (2, cfg.num_classes) if cfg.arch.endswith("vit") else (2, 24, cfg.vocab_size)
    assert logits.shape == expected and logits.dtype == torch.float32
    logits.logsumexp(-1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    dense = [p for n, p in model.named_parameters() if "proj" in n or "weight" in n]
    assert any(p.grad.abs().sum() > 0 for p in dense)


@pytest.mark.parametrize("name", ["m2-gpt-tiny", "gpt-tiny"])
@pytest.mark.parametrize("length", [37, 100])
def test_causality_in_float64(name, length):
    """∂logits[t]/∂emb[s] = 0 for every s > t up to round-off, and ≠ 0 for s ≤ t (the test can fail).

    Both bounds are relative to the largest gradient of the row (~40-120 here): float64 FFT noise is ~1e-18 of it
    (measured 4e-17 absolute), the tolerance 1e-13 of it; the smallest real dependence is ~2e-5 of it."""
    torch.manual_seed(0)
    model = from_preset(name).double().eval()
    ids = _inputs(name, batch=1, length=length)
    emb = model.embed(ids).detach().requires_grad_(True)
    logits = model.forward_embeddings(emb)
    for t in [0, 1, length // 2, length - 2]:
        (grad,) = torch.autograd.grad(logits[0, t].sum(), emb, retain_graph=True)
        per_position = grad[0].abs().amax(-1)
        scale = per_position.max().item()
        assert per_position[t + 1:].max().item() <= 1e-13 * scale, f"position {t} sees the future"
        assert per_position[: t + 1].min().item() > 1e-8 * scale


@pytest.mark.parametrize("name", LANGUAGE)
def test_appended_padding_leaves_real_tokens_unchanged(name):
    torch.manual_seed(0)
    model = from_preset(name).double().eval()
    ids = _inputs(name, batch=2, length=20)
    pad = torch.zeros(2, 11, dtype=torch.long)  # the pad id's embedding is as nonzero as any other
    padded = torch.cat([ids, pad], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros_like(pad)], dim=1)
    reference = model(ids)
    torch.testing.assert_close(model(padded, mask)[:, :20], reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(ids, torch.ones_like(ids)), reference, rtol=1e-10, atol=1e-10)
    if not model.config.arch.endswith("gpt"):  # bidirectional: without the mask the pads do leak
        assert (model(padded)[:, :20] - reference).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["m2-bert-tiny", "bert-tiny"])
def test_a_sequence_shorter_than_its_neighbours_is_unchanged_in_a_batch(name):
    """Per-row masks: row 0 has 8 real tokens, row 1 all 16; row 0 equals its unpadded self."""
    torch.manual_seed(0)
    model = from_preset(name).double().eval()
    ids = _inputs(name, batch=2, length=16)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    torch.testing.assert_close(model(ids, mask)[0, :8], model(ids[:1, :8])[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", TINY)
def test_bf16_autocast_matches_fp32(name):
    """bf16 keeps 8 bits of mantissa (2^-8 ≈ 4e-3 per rounding); through a 2-layer model the logits
    stay within 3% relative L2 error of fp32 (the long convs run in fp32 inside)."""
    torch.manual_seed(0)
    model = from_preset(name).eval()
    x = _inputs(name)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).norm() / ref.norm()).item() < 3e-2


@pytest.mark.parametrize("name", TINY)
def test_variance_preserving_init_builds_and_runs(name):
    model = from_preset(name, init="variance_preserving").eval()
    with torch.no_grad():
        assert torch.isfinite(model(_inputs(name))).all()
