"""Forward FLOPs per token (spec §5.7), for MFU. Training is 3× this.

Conventions: a multiply-add is 2 FLOPs. Counted: every matmul (dense, block-diagonal, Monarch,
attention scores and values over the full L×L, as in PaLM's MFU), the depthwise short conv, the
FFT long convolutions as the work they do, and the elementwise gates. Not counted: norms,
activations, softmax, residual adds and embeddings lookups (a few FLOPs per feature).

The FFT cost of one real transform of size n is taken as 2.5·n·log2(n) (the usual split-radix
count, half of the complex 5·n·log2(n)); a long conv of L tokens in one channel does one forward
rFFT and one inverse of size n = 2L, a pointwise complex product (6 FLOPs per bin) and the D skip.

The implicit filters are generated once per forward call, whatever the batch size, so their cost
is not per token: see :func:`filter_flops_per_forward` (negligible at training batch sizes).
"""

from __future__ import annotations

import math

from m2dist.models.build import CAUSAL_ARCHS, VISION_ARCHS, is_m2
from m2dist.config.model import ModelConfig


def rfft_flops(n: int) -> float:
    return 2.5 * n * math.log2(n)


def long_conv_flops_per_token(seq_len: int) -> float:
    """One channel of :func:`m2dist.ops.long_conv`, per token (input and output transforms)."""
    n = 2 * seq_len
    return (2 * rfft_flops(n) + 6 * (n // 2 + 1)) / seq_len + 2


def monarch_weights(in_features: int, out_features: int, nblocks: int, mlp_type: str) -> int:
    p, s = in_features // nblocks, out_features // nblocks
    if mlp_type == "blockdiag":
        return nblocks * s * p
    mid = p if in_features < out_features else s
    return nblocks * (mid * p + s * mid)


def _num_long_convs(cfg: ModelConfig) -> int:
    return 1 + int(cfg.residual_long_conv)


def flops_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token by kind; :func:`flops_per_token` is their sum."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    out: dict[str, float] = {}
    if is_m2(cfg):
        out["mixer_projections"] = layers * 2 * (3 * h * h + h * h)
        out["short_conv"] = layers * 2 * 3 * h * cfg.short_conv_size
        out["long_conv_fft"] = layers * _num_long_convs(cfg) * h * long_conv_flops_per_token(seq_len)
        out["gates"] = layers * 2 * h
        weights = (monarch_weights(h, 2 * i, cfg.nblocks, cfg.mlp_type)
                   + monarch_weights(i, h, cfg.nblocks, cfg.mlp_type))
        out["mlp"] = layers * (2 * weights + i)  # + the GLU product
    else:
        out["attention_projections"] = layers * 2 * (3 * h * h + h * h)
        out["attention_scores"] = layers * 2 * 2 * seq_len * h  # QKᵀ and AV over all L keys
        out["mlp"] = layers * 2 * 2 * h * i
    if cfg.arch in VISION_ARCHS:
        out["patch_embedding"] = 2 * cfg.in_channels * cfg.patch_size ** 2 * h
        out["head"] = 2 * h * cfg.num_classes / seq_len  # once per image after pooling
    elif cfg.arch in CAUSAL_ARCHS:
        out["head"] = 2 * h * cfg.vocab_size
    else:  # MLM head on every position (the logits contract), dense transform + decoder
        out["head"] = 2 * h * h + 2 * h * cfg.vocab_size
    return out


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length ``seq_len`` (for ViT: the number of patches)."""
    return float(sum(flops_breakdown(cfg, seq_len).values()))


def filter_flops_per_forward(cfg: ModelConfig, seq_len: int) -> float:
    """Implicit-filter generation per forward call: the filter MLPs on seq_len positions and the
    kernels' rFFTs. Zero for the Transformer baselines."""
    if not is_m2(cfg):
        return 0.0
    order, h = cfg.filter_order, cfg.hidden_size
    directions = 1 if cfg.arch in CAUSAL_ARCHS else 2
    mlp = 2 * seq_len * (cfg.filter_emb_dim * order + 2 * order * order + order * h)
    kernel_fft = h * rfft_flops(2 * seq_len)
    return float(cfg.num_layers * _num_long_convs(cfg) * (directions * mlp + kernel_fft))
