"""``build_model(model_config)``: the one place that maps a ModelConfig to modules."""

from __future__ import annotations

from torch import nn

from m2dist.models.attention import SelfAttention
from m2dist.models.bert import BertForMaskedLM
from m2dist.models.blocks import M2BertLayer, PostNormBlock, PreNormBlock
from m2dist.config.model import TASK_OF_ARCH, ModelConfig
from m2dist.models.dense_mlp import DenseMLP
from m2dist.models.gpt import CausalLM
from m2dist.models.monarch_mlp import MonarchGLU
from m2dist.models.sequence_mixer import M2SequenceMixer
from m2dist.models.vit import VisionClassifier

# Derived from the one arch -> task table, so a new arch is written once.
M2_ARCHS = tuple(a for a in TASK_OF_ARCH if a.startswith("m2_"))
CAUSAL_ARCHS = tuple(a for a, task in TASK_OF_ARCH.items() if task == "causal_lm")
VISION_ARCHS = tuple(a for a, task in TASK_OF_ARCH.items() if task == "image")


def is_m2(cfg: ModelConfig) -> bool:
    return cfg.arch in M2_ARCHS


def sequence_length(cfg: ModelConfig) -> int:
    """Longest sequence the model mixes: max_seq_len for text, the number of patches for images."""
    if cfg.arch in VISION_ARCHS:
        return (cfg.image_size // cfg.patch_size) ** 2
    return cfg.max_seq_len


def token_mixer(cfg: ModelConfig) -> nn.Module:
    causal = cfg.arch in CAUSAL_ARCHS
    if is_m2(cfg):
        return M2SequenceMixer(
            cfg.hidden_size, sequence_length(cfg), causal=causal, filter_order=cfg.filter_order,
            filter_emb_dim=cfg.filter_emb_dim, filter_w=cfg.filter_w, short_conv_size=cfg.short_conv_size,
            residual_long_conv=cfg.residual_long_conv, pre_norm=cfg.mixer_pre_norm,
            layer_norm_eps=cfg.layer_norm_eps, init=cfg.init,
        )
    return SelfAttention(cfg.hidden_size, cfg.num_heads, causal=causal, dropout=cfg.dropout, init=cfg.init)


def channel_mixer(cfg: ModelConfig) -> nn.Module:
    if is_m2(cfg):
        return MonarchGLU(cfg.hidden_size, cfg.intermediate_size, cfg.nblocks, cfg.mlp_type, cfg.dropout, cfg.init)
    return DenseMLP(cfg.hidden_size, cfg.intermediate_size, cfg.dropout, cfg.init)


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch not in VISION_ARCHS and cfg.vocab_size <= 0:
        raise ValueError(
            f"model.vocab_size is {cfg.vocab_size}: set it, or set data.tokenizer so the trainer fills it in"
        )
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    if cfg.arch == "m2_bert":
        return BertForMaskedLM(cfg, [M2BertLayer(token_mixer(cfg), channel_mixer(cfg), h, eps)
                                     for _ in range(cfg.num_layers)])
    if cfg.arch == "bert":
        return BertForMaskedLM(cfg, [PostNormBlock(token_mixer(cfg), channel_mixer(cfg), h, eps, cfg.dropout)
                                     for _ in range(cfg.num_layers)])
    blocks = [PreNormBlock(token_mixer(cfg), channel_mixer(cfg), h, eps, cfg.dropout) for _ in range(cfg.num_layers)]
    if cfg.arch in CAUSAL_ARCHS:
        return CausalLM(cfg, blocks)
    if cfg.arch in VISION_ARCHS:
        return VisionClassifier(cfg, blocks)
    raise ValueError(f"unknown model.arch {cfg.arch!r}")
