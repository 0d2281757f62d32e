"""flops_per_token against torch's FLOP counter (which counts matmuls, bmm and convolutions)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from m2dist.models import flops_per_token, from_preset, preset_config
from m2dist.models.build import sequence_length
from m2dist.models.flops import filter_flops_per_forward, flops_breakdown, long_conv_flops_per_token, rfft_flops

# FlopCounterMode does not see FFTs, elementwise products, or the CPU SDPA kernel
# (_scaled_dot_product_flash_attention_for_cpu has no FLOP formula registered).
NOT_MATMUL = ("long_conv_fft", "gates", "attention_scores")


@pytest.mark.parametrize("name", ["m2-bert-tiny", "m2-gpt-tiny", "m2-vit-tiny", "bert-tiny", "gpt-tiny", "vit-tiny"])
@pytest.mark.parametrize("mlp_type", ["blockdiag", "monarch"])
def test_matmul_flops_match_torch_counter(name, mlp_type):
    cfg = preset_config(name, mlp_type=mlp_type)
    model = from_preset(name, mlp_type=mlp_type).eval()
    batch, length = 2, 24
    if cfg.arch.endswith("vit"):
        length = sequence_length(cfg)
        x = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    else:
        x = torch.randint(0, cfg.vocab_size, (batch, length))
    with FlopCounterMode(display=False) as counter:
        model(x)
    parts = flops_breakdown(cfg, length)
    glu_products = cfg.num_layers * cfg.intermediate_size if cfg.arch.startswith("m2") else 0
    per_token = sum(v for k, v in parts.items() if k not in NOT_MATMUL) - glu_products
    # The filter MLPs run once per forward; their rFFTs are not matmuls.
    filters = filter_flops_per_forward(cfg, length)
    if cfg.arch.startswith("m2"):
        filters -= cfg.num_layers * (1 + cfg.residual_long_conv) * cfg.hidden_size * rfft_flops(2 * length)
    expected = batch * length * per_token + filters
    if cfg.arch.startswith("m2"):  # the symmetric-padded short conv also computes k−1 outputs it drops
        expected += batch * (cfg.short_conv_size - 1) * parts["short_conv"]
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)
    assert flops_per_token(cfg, length) == pytest.approx(sum(parts.values()))


def test_m2_bert_base_matches_spec_estimate():
    """Spec §5.7: ≈14H² per layer (8H² mixer + 6H² MLP) ≈ 99 MFLOP/token for 12 layers at H=768."""
    parts = flops_breakdown(preset_config("m2-bert-80m"), 128)
    assert (parts["mixer_projections"] + parts["mlp"]) / 1e6 == pytest.approx(99.1, rel=0.01)
    fft = parts["long_conv_fft"] / (12 * 2 * 768)
    assert 10 * 8 < fft < 10 * 8 + 10  # ≈ 10·log2(2L) per channel and token, plus the spectrum product


def test_fft_cost_grows_like_log_length():
    assert long_conv_flops_per_token(4096) / long_conv_flops_per_token(128) == pytest.approx(13 / 8, rel=0.05)
