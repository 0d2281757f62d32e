"""Typed model configuration shared by every architecture (M2 and Transformer baselines).

Read by the rest of the system as ``m2dist.config.schema.Config.model``. Every field has a default;
presets (``m2dist.models.presets``) set the values of the paper's models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal["m2_bert", "m2_gpt", "m2_vit", "bert", "gpt", "vit"]
# What a run trains: next-token LM, masked LM, or image classification. It fixes what the batches hold
# (m2dist.data.contract), the loss and the evaluation statistics (m2dist.train.tasks).
Task = Literal["causal_lm", "mlm", "image"]
# The task of each arch: the one place it is written. data.kind must agree (checked when the config loads).
TASK_OF_ARCH: dict[str, Task] = {
    "m2_gpt": "causal_lm", "gpt": "causal_lm",
    "m2_bert": "mlm", "bert": "mlm",
    "m2_vit": "image", "vit": "image",
}


@dataclass
class ModelConfig:
    # Which family to build; M2 variants mix with Monarch layers, the others are SDPA baselines.
    arch: Arch = "m2_gpt"
    # Vocabulary size; 0 means "take it from data.tokenizer" (the trainer fills it in before building).
    vocab_size: int = 0
    # Longest input; also the implicit filters' l_max (their time axis is normalised to it).
    max_seq_len: int = 128
    hidden_size: int = 64
    num_layers: int = 2
    # M2: the GLU's inner width I (its first layer maps H -> 2I). Baselines: the dense MLP's width.
    intermediate_size: int = 256
    # Monarch dimension mixer: number of blocks and order 1 ("blockdiag", the paper) or 2 ("monarch").
    nblocks: int = 4
    mlp_type: Literal["blockdiag", "monarch"] = "blockdiag"
    # Implicit (Hyena) long-convolution filters: MLP width, positional-feature size (odd), sine freq.
    filter_order: int = 128
    filter_emb_dim: int = 5
    filter_w: float = 10.0
    # Depthwise causal short convolution after the in-projection.
    short_conv_size: int = 3
    # Second long conv of the mixer input added to the output (M2-BERT); off in the Hyena-style models.
    residual_long_conv: bool = True
    # LayerNorm at the mixer input (the public code's hyena_training_additions; the 80M checkpoint).
    mixer_pre_norm: bool = False
    # Learned absolute position embeddings (M2-BERT and the baselines; M2-GPT/ViT rely on the filters).
    position_embeddings: bool = True
    # BERT token-type embeddings (all inputs use type 0, as in pretraining); 0 disables them.
    type_vocab_size: int = 2
    # Transformer baselines.
    num_heads: int = 4
    # Vision.
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    # Dropout on embeddings, the GLU activation and residual branches (M2-BERT uses 0.1).
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    # "paper" reproduces the public code's init; "variance_preserving" keeps activations O(1)
    # (Monarch blocks N(0, 1/block_fan_in), dense projections N(0, 1/fan_in), zero biases).
    init: Literal["paper", "variance_preserving"] = "paper"
    # Language models: the output projection shares the token-embedding matrix.
    tie_embeddings: bool = True
