"""benchmarks/activation_memory.py on the tiny presets (fake CUDA tensors, no GPU): what each layer keeps against the
sizes its ops must keep, and the MLP recompute's savings against their formulas."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import activation_memory  # noqa: E402


def _row(monkeypatch, recompute: str):
    monkeypatch.setenv("TOKENS", "512")
    monkeypatch.setenv("M2DIST_MLP_RECOMPUTE", recompute)
    return activation_memory.measure("m2-gpt-tiny", 128)


def test_m2_layer_keeps_what_its_ops_need_and_the_mlp_recompute_drops_its_intermediates(monkeypatch):
    from m2dist.config import load_config

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "smoke", "m2-gpt-tiny.yaml"),
                      ["model.vocab_size=64"]).model
    tokens, h, i = 512, cfg.hidden_size, cfg.intermediate_size
    base = _row(monkeypatch, "none")
    assert base["tokens"] == tokens and base["layers"] == cfg.num_layers
    ops = base["per_layer_by_op_bytes"]
    # the GLU keeps its bf16 input g (tokens, 2I); the out-projection its bf16 input a (tokens, I) and its weight
    assert ops["mlp.act"] == pytest.approx(tokens * 2 * i * 2, rel=0.01)
    assert ops["mlp.out_proj.product"] >= tokens * i * 2
    # each pre-norm keeps the fp32 residual stream it normalises and its fp32 mean and 1/std per token
    assert ops["norm1"] == tokens * (h + 2) * 4
    glu = _row(monkeypatch, "glu")  # a (tokens, I) less per layer
    assert "mlp.out_proj.product" not in glu["per_layer_by_op_bytes"]
    assert base["activations_bytes"] - glu["activations_bytes"] == pytest.approx(cfg.num_layers * tokens * i * 2,
                                                                                 rel=0.05)
    mlp = _row(monkeypatch, "mlp")  # g and a, 3I, less per layer; the MLP keeps its input instead of its product's
    assert "mlp.act" not in mlp["per_layer_by_op_bytes"]
    assert base["activations_bytes"] - mlp["activations_bytes"] == pytest.approx(
        cfg.num_layers * tokens * 3 * i * 2, rel=0.05)
