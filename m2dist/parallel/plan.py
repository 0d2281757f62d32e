"""The parallel plan: one entry per layer type, the one place a shard spec is written.

An entry (:class:`LayerPlan`) names a layer type of ``m2dist.models`` and, per mesh axis, an :class:`AxisPlan`:

* ``params``: per parameter or buffer (name relative to the layer), its :class:`ShardSpec`. Anything not named is
  replicated on that axis; a name the layer does not have (``mlp_rev`` of a causal filter, a missing bias) is skipped.
* ``forward``: per submodule (relative path, ``""`` = the layer itself), how its forward is wrapped -- the collectives
  at its inputs and outputs, the sliced inputs, the dropout streams (``m2dist.parallel.styles``). The styles are
  torchtitan's ``parallelize_module`` vocabulary done with megatron-core's mappings: ``CopyInput`` on a Linear whose
  rows are sharded is ``ColwiseParallel``, ``ReduceOutput`` is ``RowwiseParallel``, ``CopyInput``/``SliceInput``/
  ``ScatterInput`` on a layer are ``PrepareModuleInput``.
* ``local``: attributes that hold per-rank sizes after sharding (divided by the axis size, which must divide them),
  with the config field each comes from, for the error message.

Everything else derives from this table: slicing the live parameters and wrapping the forwards
(``parallelize.parallelize``), the ``{state-dict name: ShardSpec}`` map (:func:`plan_for_model`, :func:`shard_plan`)
that the checkpoint resharding and export cut and merge by (``sharding``), megatron's per-parameter attributes
(``megatron_attributes``), DeepSpeed's universal-checkpoint affine maps (``universal_checkpoint``), the loss functions
(``loss.loss_functions``) and the tests. ``ShardSpec`` follows megatron-core's ``(partition_dim, partition_stride)``:
the full dimension is cut into ``stride * size`` equal chunks and rank ``r`` holds chunks ``r, r + size, ...,
r + (stride-1)*size``, concatenated in that order, so the block-interleaved layouts of the single-device model
(x1|x2|v, q|k|v, the GLU's gate|value blocks) need no re-layout.

**Tensor parallelism** (axis ``"tp"``; k = TP size; forward / backward collectives per layer):

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

* Sequence mixer (spec §1.6, §5.7): channel-sharded. ``u`` enters the TP region once, after the optional pre-norm
  (whose replicated weights must see the all-reduced gradient); ``in_proj`` is column-parallel with the same channel
  slice of x1, x2 and v (stride 3), and so is the depthwise short conv; ``mixer.core`` (everything between the
  projections, per channel) gets this rank's channels of the residual input; ``out_proj`` is row-parallel.
* Implicit filters: their hidden layers are computed redundantly from replicated parameters; only the output rows
  (order -> H), ``D`` and the fixed ``decay`` are sharded by channel. The output layer's input enters the TP region so
  the replicated filter parameters receive the gradient of all channels (an (L, order) all-reduce).
* Monarch GLU (spec §1.5): with ``nb`` blocks, gate block ``b`` (input chunk ``b``) pairs with value block
  ``b + nb/2``, and their product feeds out_proj blocks ``2b, 2b+1``. Rank ``r`` owns ``m = nb/(2k)`` consecutive
  pairs: gate|value blocks in stride 2, the matching out_proj blocks and bias entries (stride 1), the input chunks of
  its gate/value blocks (no forward communication; backward recombines the disjoint input-grad chunks with an
  all-gather) and a contiguous H/k slice of the output, all-gathered at the exit because the residual add, the
  LayerNorm statistics and the next mixer's in_proj need all H channels. TP must divide ``nb/2``.
* Attention / dense MLP (Megatron's layout): qkv (stride 3 over q|k|v, heads contiguous) and in_proj column-parallel,
  out_proj row-parallel, the local head count set on the module, attention dropout on a per-rank stream, the MLP's
  dropout drawing TP=1's mask (``rng``).
* Vocabulary (token embedding, LM head; tied or not): rows sharded; the embedding looks up its own rows and
  all-reduces; the head returns vocab-sharded logits that ``loss.loss_functions`` consumes.

**Context parallelism** (axis ``"cp"``, issue 16, docs/context_parallel.md): every parameter is replicated
(``params`` empty, so ``plan_for_model(model, "cp")`` is all-replicated and checkpoints do not change) and the
activations are sequence-sharded: each rank holds ``L/CP`` consecutive tokens, sliced by the loader. ``forward``
carries the wrapping, applied by ``parallelize(model, "cp", rank, size)`` with the same walker as TP (after it, so
the sizes it reads at call time are TP-local):

* mixer ``core`` -> ``ContextParallelCore``: the halo short conv and the all-to-all sequence <-> channels around the
  full-length long convs (``context_conv``), with the core's own long conv (a kernel's after ``accelerate``);
* implicit filters -> ``ContextFilter``: the global length's taps, for the rank's channels only;
* position embeddings (M2-BERT) -> ``PositionOffset``: the rank's positions;
* M2-ViT's mean over patches -> ``ContextMean``: the mean over every rank's patches (the loader gives a rank its
  block of pixel rows, i.e. of patch rows: the row-major patch sequence's consecutive block).

Position-wise layers (projections, GLU, norms, embeddings, heads) need nothing. Attention has no CP form (the config
refuses the Transformer baselines). The CP styles run on megatron's context-parallel group.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from m2dist.models.attention import SelfAttention
from m2dist.models.bert import BertForMaskedLM
from m2dist.models.dense_mlp import DenseMLP
from m2dist.models.gpt import CausalLM
from m2dist.models.hyena_filter import ImplicitFilter
from m2dist.models.monarch_mlp import MonarchGLU
from m2dist.models.sequence_mixer import M2SequenceMixer
from m2dist.models.vit import PatchMean
from m2dist.parallel import styles


@dataclass(frozen=True)
class ShardSpec:
    """How one tensor is cut over a mesh axis: ``dim`` None = replicated (megatron's partition_dim / stride)."""

    dim: Optional[int] = None
    stride: int = 1

    @property
    def replicated(self) -> bool:
        return self.dim is None

    def to_dict(self) -> dict:
        return asdict(self)


REPLICATED = ShardSpec()
ROWS = ShardSpec(0)        # output features / vocabulary rows / channels
COLUMNS = ShardSpec(1)     # input features of a row-parallel Linear

Styles = Union[styles.Style, tuple]


@dataclass(frozen=True)
class AxisPlan:
    """One layer type on one mesh axis (see the module docstring)."""

    params: Mapping[str, ShardSpec] = field(default_factory=dict)
    forward: Mapping[str, Styles] = field(default_factory=dict)
    local: Mapping[str, str] = field(default_factory=dict)
    check: Optional[Callable[[nn.Module, int], None]] = None  # refusals beyond divisibility
    logits_like: Optional[str] = None  # the layer's output (logits) is cut on its last dim like this parameter's rows

    def each_style(self) -> Iterator[tuple[str, styles.Style]]:
        """(submodule path, style) pairs, a tuple of styles on one path unrolled in order."""
        for path, value in self.forward.items():
            for style in (value if isinstance(value, tuple) else (value,)):
                yield path, style


@dataclass(frozen=True)
class LayerPlan:
    layer: type
    axes: Mapping[str, AxisPlan]


def _check_glu(mlp: MonarchGLU, size: int) -> None:
    from m2dist.monarch import BlockDiagonalLinear

    if not isinstance(mlp.gated_proj, BlockDiagonalLinear):
        raise NotImplementedError(
            "tensor parallelism shards block-diagonal GLUs (model.mlp_type=blockdiag); the order-2 Monarch "
            "GLU's permutation mixes blocks across ranks and would need an all-to-all between its factors")
    nb = mlp.gated_proj.nblocks
    if nb % 2 or (nb // 2) % size:
        raise ValueError(
            f"parallel.tensor={size} must divide nblocks/2 = {nb / 2:g}: each rank owns whole gate/value block "
            f"pairs (model.nblocks={nb} allows tensor parallelism up to {max(nb // 2, 1)})")


def _check_vocab(path: str) -> Callable[[nn.Module, int], None]:
    def check(model: nn.Module, size: int) -> None:
        vocab = model.get_submodule(path).num_embeddings
        if vocab % size:
            raise ValueError(f"model.vocab_size={vocab} is not divisible by parallel.tensor={size}: set "
                             f"model.vocab_size to a multiple of {size} (pad the tokenizer's vocabulary; the extra "
                             f"rows are never used)")
    return check


def _check_context(mixer: M2SequenceMixer, size: int) -> None:
    if mixer.hidden_size % size:  # TP-local channels, when TP was applied first
        raise ValueError(f"parallel.context={size} must divide the {mixer.hidden_size} channels of each "
                         f"tensor-parallel rank (model.hidden_size / parallel.tensor)")


_CHANNELS = "model.hidden_size"

PLAN: tuple[LayerPlan, ...] = (
    LayerPlan(M2SequenceMixer, {"tp": AxisPlan(
        params={"in_proj.weight": ShardSpec(0, 3), "in_proj.bias": ShardSpec(0, 3),  # x1 | x2 | v
                "short_conv.weight": ShardSpec(0, 3), "short_conv.bias": ShardSpec(0, 3),
                "out_proj.weight": COLUMNS},
        forward={"": styles.CopyInput(after="norm"),
                 "core": styles.SliceInput(arg=1, like="out_proj.weight"),  # residual input u: its channels
                 "out_proj": styles.ReduceOutput()},
        local={"hidden_size": _CHANNELS}),
        "cp": AxisPlan(forward={"core": styles.ContextParallelCore()}, check=_check_context)}),
    LayerPlan(ImplicitFilter, {"tp": AxisPlan(
        params={"mlp_fwd.out.weight": ROWS, "mlp_rev.out.weight": ROWS, "D": ROWS, "decay": ROWS},
        forward={"mlp_fwd.out": styles.CopyInput(), "mlp_rev.out": styles.CopyInput()},
        local={"channels": _CHANNELS}),
        "cp": AxisPlan(forward={"": styles.ContextFilter()})}),
    LayerPlan(MonarchGLU, {"tp": AxisPlan(
        params={"gated_proj.weight": ShardSpec(0, 2),  # gate blocks and their value partners
                "out_proj.weight": ROWS, "out_proj.bias": ROWS},
        forward={"": (styles.ScatterInput(like="gated_proj.weight"), styles.GatherOutput()),
                 "dropout": styles.ColumnDropout(features="intermediate_size")},
        local={"intermediate_size": "model.intermediate_size"},
        check=_check_glu)}),
    LayerPlan(SelfAttention, {"tp": AxisPlan(
        params={"qkv_proj.weight": ShardSpec(0, 3), "qkv_proj.bias": ShardSpec(0, 3),  # q | k | v
                "out_proj.weight": COLUMNS},
        forward={"": styles.RankDropoutStream(), "qkv_proj": styles.CopyInput(), "out_proj": styles.ReduceOutput()},
        local={"num_heads": "model.num_heads"})}),
    LayerPlan(DenseMLP, {"tp": AxisPlan(
        params={"in_proj.weight": ROWS, "in_proj.bias": ROWS, "out_proj.weight": COLUMNS},
        forward={"in_proj": styles.CopyInput(), "out_proj": styles.ReduceOutput(),
                 "dropout": styles.ColumnDropout(features="in_proj.out_features")},
        local={"in_proj.out_features": "model.intermediate_size"})}),
    LayerPlan(CausalLM, {"tp": AxisPlan(
        params={"token.weight": ROWS, "lm_head.weight": ROWS},
        forward={"token": styles.VocabEmbedding(), "lm_head": styles.CopyInput()},
        check=_check_vocab("token"), logits_like="lm_head.weight"),
        "cp": AxisPlan(forward={"position": styles.PositionOffset()})}),
    LayerPlan(BertForMaskedLM, {"tp": AxisPlan(
        params={"embeddings.token.weight": ROWS, "head.decoder.weight": ROWS, "head.decoder.bias": ROWS},
        forward={"embeddings.token": styles.VocabEmbedding(), "head.decoder": styles.CopyInput()},
        check=_check_vocab("embeddings.token"), logits_like="head.decoder.weight"),
        "cp": AxisPlan(forward={"embeddings.position": styles.PositionOffset()})}),
    LayerPlan(PatchMean, {"cp": AxisPlan(forward={"": styles.ContextMean()})}),
)


def entry_of(module: nn.Module, axis: str) -> Optional[AxisPlan]:
    """The plan of ``module`` on ``axis`` (matched by type: converted subclasses of a layer keep its entry)."""
    for entry in PLAN:
        if isinstance(module, entry.layer):
            return entry.axes.get(axis)
    return None


def layer_plans(model: nn.Module, axis: str = "tp") -> Iterator[tuple[str, nn.Module, AxisPlan]]:
    """``(prefix, layer, its AxisPlan)`` of every planned layer of ``model`` (prefix "" or ending in ".")."""
    for name, module in model.named_modules():
        plan = entry_of(module, axis)
        if plan is not None:
            yield (name + "." if name else ""), module, plan


def has_tensor(module: nn.Module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    try:
        sub = module.get_submodule(owner)
    except AttributeError:
        return False
    return isinstance(getattr(sub, attr, None), torch.Tensor)


def plan_for_model(model: nn.Module, axis: str = "tp") -> dict[str, ShardSpec]:
    """``{name: ShardSpec}`` for every entry of ``model``'s state dict (tied names included; same on the single-device
    model and its sharded copy, whose names are unchanged)."""
    specs: dict[str, ShardSpec] = {}
    for prefix, layer, plan in layer_plans(model, axis):
        for rel, spec in plan.params.items():
            if has_tensor(layer, rel):
                specs[prefix + rel] = spec
    return {name: specs.get(name, REPLICATED) for name in model.state_dict(keep_vars=True)}


def shard_plan(model_config, axis: str = "tp") -> dict[str, ShardSpec]:
    """The plan of ``build_model(model_config)``, computed on the meta device (no memory, no RNG use)."""
    from m2dist.models import build_model

    with torch.device("meta"):
        model = build_model(model_config)
    return plan_for_model(model, axis)
