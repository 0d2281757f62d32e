"""``apply_tensor_parallel(model, model_config)``: shard a single-device m2dist model over the TP group, in place.

torchtitan style: the trainer builds the full model with the same seed on every rank (so TP=k starts from exactly the
TP=1 weights, see ``m2dist.parallel.rng``), then this function keeps each rank's slice of every sharded parameter and
swaps the affected modules' classes for tensor-parallel subclasses (``linear``, ``m2_layers``, ``baseline_layers``,
``vocab``).
Parameter names stay those of the single-device model.

Where the collectives go, per layer (k = TP size; forward / backward):

=====================  ========================================  =========================================
layer                  forward                                   backward
=====================  ========================================  =========================================
M2 sequence mixer      all-reduce (B,L,H) after out_proj         all-reduce (B,L,H) of the input grad;
                                                                 all-reduce (L,order) per filter MLP
Monarch GLU            all-gather (B,L,H/k per rank) of the      all-gather (B,L,H/k per rank) of the
                       output (the layer's one collective)       input grad chunks
attention / dense MLP  all-reduce (B,L,H) after out_proj         all-reduce (B,L,H) of the input grad
embedding              all-reduce (B,L,H)                        --
LM head + loss         3 all-reduces of (B,L) scalars            all-reduce (B,L,H) of the head's input grad
=====================  ========================================  =========================================

The model afterwards also carries:

* ``parallel_cross_entropy(logits, labels)`` (per-position losses from vocab-sharded logits; the trainer uses it),
  ``parallel_argmax(logits)`` (global predicted ids) and ``gather_logits(logits)`` (full logits, tests/tools);
* ``tensor_parallel_plan`` ({state-dict name: ShardSpec}) and ``tensor_parallel_size``;
* megatron's ``tensor_model_parallel`` / ``partition_dim`` / ``partition_stride`` attributes on every parameter,
  plus ``tp_full_shape``;
* ``universal_checkpoint_info`` for DeepSpeed's universal checkpoints (affine maps, see ``sharding``).
"""

from __future__ import annotations

from torch import nn

from m2dist.parallel.sharding import ShardSpec, plan_for_model, shard_tensor, tag_parameters


def _vocab_modules(model: nn.Module) -> tuple[nn.Embedding, nn.Linear, str, str]:
    """(token embedding, output layer, their state-dict names) of a GPT- or BERT-style model of m2dist.models."""
    if hasattr(model, "lm_head"):
        return model.token, model.lm_head, "token.weight", "lm_head"
    return model.embeddings.token, model.head.decoder, "embeddings.token.weight", "head.decoder"


def _shard_vocab_(model: nn.Module, rank: int, size: int) -> None:
    from m2dist.parallel.linear import ColumnParallelLinear, shard_parameter_
    from m2dist.parallel.vocab import VocabParallelEmbedding

    emb, head, _, _ = _vocab_modules(model)
    vocab = emb.num_embeddings
    if vocab % size:
        raise ValueError(f"model.vocab_size={vocab} is not divisible by parallel.tensor={size}: set model.vocab_size "
                         f"to a multiple of {size} (pad the tokenizer's vocabulary; the extra rows are never used)")
    tied = head.weight is emb.weight
    rows = ShardSpec(0, 1)
    shard_parameter_(emb, "weight", rows, rank, size)
    emb.__class__ = VocabParallelEmbedding
    emb.num_embeddings = vocab // size
    emb.vocab_start = rank * (vocab // size)
    if tied:
        head.weight = emb.weight
    else:
        shard_parameter_(head, "weight", rows, rank, size)
    if head.bias is not None:
        shard_parameter_(head, "bias", rows, rank, size)
    head.__class__ = ColumnParallelLinear
    head.out_features = vocab // size


def _check_shapes(model: nn.Module, full_shapes: dict, plan: dict, rank: int, size: int) -> None:
    """Every state-dict entry has exactly the shape ``shard_tensor`` gives: plan and modules agree."""
    import torch

    for name, t in model.state_dict().items():
        want = shard_tensor(torch.empty(full_shapes[name], device="meta"), plan[name], rank, size).shape
        if tuple(t.shape) != tuple(want):
            raise AssertionError(f"tensor parallel: {name} has local shape {tuple(t.shape)}, plan says {tuple(want)}")


def apply_tensor_parallel(model: nn.Module, model_config=None, universal_info: bool = True) -> nn.Module:
    """Shard ``model`` (built by ``m2dist.models.build_model``, identical on every rank) over megatron's TP group
    (``m2dist.parallel.init_groups`` initialises it). Returns the same object, modified in place."""
    from m2dist.models.attention import SelfAttention
    from m2dist.models.dense_mlp import DenseMLP
    from m2dist.models.monarch_mlp import MonarchGLU
    from m2dist.models.sequence_mixer import M2SequenceMixer
    from m2dist.parallel import baseline_layers, m2_layers, vocab
    from m2dist.parallel.mappings import tp_rank, tp_size

    size = tp_size()
    if size == 1:
        return model
    rank = tp_rank()
    plan = plan_for_model(model, model_config)
    full_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    converters = {M2SequenceMixer: m2_layers.shard_sequence_mixer_, MonarchGLU: m2_layers.shard_monarch_glu_,
                  SelfAttention: baseline_layers.shard_attention_, DenseMLP: baseline_layers.shard_dense_mlp_}
    for module in list(model.modules()):
        convert = converters.get(type(module))
        if convert is not None:
            convert(module, rank, size)
    if hasattr(model, "lm_head") or hasattr(model, "embeddings"):  # language models (ViT has no vocabulary)
        _shard_vocab_(model, rank, size)
        model.parallel_cross_entropy = vocab.parallel_cross_entropy
        model.parallel_argmax = vocab.parallel_argmax
        model.gather_logits = vocab.gather_logits

    _check_shapes(model, full_shapes, plan, rank, size)
    tag_parameters(model, plan, size)
    model.tensor_parallel_plan = plan
    model.tensor_parallel_size = size
    if universal_info:
        from m2dist.parallel.sharding import universal_checkpoint_info

        model.universal_checkpoint_info = universal_checkpoint_info(model)
    return model
