"""Model presets: the paper's models, the Transformer baselines and tiny test models.

Each preset is mirrored by ``configs/models/<name>.yaml`` (a test keeps them equal).
``python -m m2dist.models.presets --markdown`` prints the README's table of presets.

Sources (spec sections): M2-BERT sizes §2.2 (vocab 30528, l_max 128, LN eps 1e-12, dropout 0.1);
M2-GPT follows the closest public recipe, safari's Hyena PILE configs (§3.2: filter order 64,
emb_dim 33, w 14, seq 2048, GPT-2 vocab padded to 50304, no position embeddings), with widths and
depths chosen to match the GPT baselines' parameter counts (the paper's exact shapes are not public);
M2-ViT is Hyena-ViT-b with block-diagonal GLU MLPs (§3.3: no position embedding, mean pooling,
filter order 128, emb_dim 33, w 1), its GLU width chosen so that the model has ≈45M parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Callable

from m2dist.config.model import ModelConfig

BERT_VOCAB = 30528  # bert-base-uncased's 30522, padded to a multiple of 8
GPT_VOCAB = 50304  # GPT-2's 50257, padded to a multiple of 64
TINY_VOCAB = 512


def _m2_bert(hidden: int) -> ModelConfig:
    return ModelConfig(arch="m2_bert", vocab_size=BERT_VOCAB, max_seq_len=128, hidden_size=hidden, num_layers=12,
                       intermediate_size=4 * hidden, nblocks=4, filter_order=128, filter_emb_dim=5, filter_w=10.0,
                       residual_long_conv=True, dropout=0.1, layer_norm_eps=1e-12)


def _m2_gpt(hidden: int, layers: int) -> ModelConfig:
    return ModelConfig(arch="m2_gpt", vocab_size=GPT_VOCAB, max_seq_len=2048, hidden_size=hidden, num_layers=layers,
                       intermediate_size=4 * hidden, nblocks=4, filter_order=64, filter_emb_dim=33, filter_w=14.0,
                       residual_long_conv=False, position_embeddings=False, type_vocab_size=0)


def _gpt(hidden: int, layers: int, heads: int) -> ModelConfig:
    return ModelConfig(arch="gpt", vocab_size=GPT_VOCAB, max_seq_len=2048, hidden_size=hidden, num_layers=layers,
                       intermediate_size=4 * hidden, num_heads=heads, type_vocab_size=0)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "m2-bert-80m": lambda: _m2_bert(768),
    "m2-bert-110m": lambda: _m2_bert(960),
    "m2-bert-260m": lambda: _m2_bert(1536),
    "m2-bert-341m": lambda: _m2_bert(1792),
    "m2-gpt-125m": lambda: _m2_gpt(768, 20),
    "m2-gpt-360m": lambda: _m2_gpt(1024, 40),
    "m2-vit-45m": lambda: ModelConfig(
        arch="m2_vit", hidden_size=768, num_layers=12, intermediate_size=1792, nblocks=4, filter_order=128,
        filter_emb_dim=33, filter_w=1.0, residual_long_conv=False, position_embeddings=False, type_vocab_size=0,
        image_size=224, patch_size=16, num_classes=1000),
    "bert-base": lambda: ModelConfig(
        arch="bert", vocab_size=BERT_VOCAB, max_seq_len=512, hidden_size=768, num_layers=12,
        intermediate_size=3072, num_heads=12, dropout=0.1, layer_norm_eps=1e-12),
    "gpt-125m": lambda: _gpt(768, 12, 12),
    "gpt-360m": lambda: _gpt(1024, 24, 16),
    "vit-b16": lambda: ModelConfig(
        arch="vit", hidden_size=768, num_layers=12, intermediate_size=3072, num_heads=12, type_vocab_size=0,
        image_size=224, patch_size=16, num_classes=1000),
    # Tiny models for tests, smoke runs and the quickstart.
    "m2-bert-tiny": lambda: ModelConfig(
        arch="m2_bert", vocab_size=TINY_VOCAB, max_seq_len=128, hidden_size=64, num_layers=2, intermediate_size=256,
        nblocks=4, filter_order=16, filter_emb_dim=5, filter_w=10.0, residual_long_conv=True, layer_norm_eps=1e-12),
    "m2-gpt-tiny": lambda: ModelConfig(
        arch="m2_gpt", vocab_size=TINY_VOCAB, max_seq_len=128, hidden_size=64, num_layers=2, intermediate_size=256,
        nblocks=4, filter_order=16, filter_emb_dim=5, filter_w=14.0, residual_long_conv=False,
        position_embeddings=False, type_vocab_size=0),
    "m2-vit-tiny": lambda: ModelConfig(
        arch="m2_vit", hidden_size=64, num_layers=2, intermediate_size=128, nblocks=4, filter_order=16,
        filter_emb_dim=5, filter_w=1.0, residual_long_conv=False, position_embeddings=False, type_vocab_size=0,
        image_size=32, patch_size=8, num_classes=10),
    "bert-tiny": lambda: ModelConfig(
        arch="bert", vocab_size=TINY_VOCAB, max_seq_len=128, hidden_size=64, num_layers=2, intermediate_size=256,
        num_heads=4, layer_norm_eps=1e-12),
    "gpt-tiny": lambda: ModelConfig(
        arch="gpt", vocab_size=TINY_VOCAB, max_seq_len=128, hidden_size=64, num_layers=2, intermediate_size=256,
        num_heads=4, type_vocab_size=0),
    "vit-tiny": lambda: ModelConfig(
        arch="vit", hidden_size=64, num_layers=2, intermediate_size=256, num_heads=4, type_vocab_size=0,
        image_size=32, patch_size=8, num_classes=10),
}


def list_presets() -> list[str]:
    return list(PRESETS)


def preset_config(name: str, **overrides) -> ModelConfig:
    """The preset's ModelConfig with fields replaced by ``overrides``."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"unknown model preset '{name}'{hint} (presets: {', '.join(PRESETS)})")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown} for preset '{name}'")
    return dataclasses.replace(PRESETS[name](), **overrides)


def from_preset(name: str, **overrides):
    from m2dist.models.build import build_model

    return build_model(preset_config(name, **overrides))


def preset_table() -> str:
    """Markdown table of every preset: shape, parameters (built on the meta device), forward FLOPs/token."""
    import torch

    from m2dist.models.build import build_model, sequence_length
    from m2dist.models.flops import flops_per_token
    from m2dist.models.optim import count_parameters

    rows = ["| preset | arch | layers | hidden | seq len | params | fwd GFLOPs/token |",
            "|---|---|---|---|---|---|---|"]
    for name in PRESETS:
        cfg = preset_config(name)
        with torch.device("meta"):
            params = count_parameters(build_model(cfg))
        seq = sequence_length(cfg)
        rows.append(f"| `{name}` | {cfg.arch} | {cfg.num_layers} | {cfg.hidden_size} | {seq} | "
                    f"{params / 1e6:.2f}M | {flops_per_token(cfg, seq) / 1e9:.4f} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="List the model presets.")
    parser.add_argument("--markdown", action="store_true", help="print the table of presets as Markdown")
    args = parser.parse_args(argv)
    print(preset_table() if args.markdown else "\n".join(PRESETS))


if __name__ == "__main__":
    main()
