"""``accelerate(model)``: the one place that decides which fused kernels a model runs (a torchtitan-style "model
converter", applied from outside the plain single-device model).

The models keep each hot computation in a parameter-free module -- ``BlockDiagonalLinear.product``,
``MonarchLinear.product``, ``MonarchGLU.act``, ``M2SequenceMixer.core`` -- and the converter swaps the class of
each such module, in place, for its kernel-backed subclass in ``m2dist.kernels.modules``:

    module (reference)        swapped for                                      unless
    BlockDiagonalProduct      BlockDiagonalKernel                              M2DIST_KERNELS=0
    MonarchProduct            MonarchKernel (choice auto | kernel)             M2DIST_KERNELS=0, M2DIST_MONARCH=einsum
    GeluGLU                   FusedGeluGLU                                     M2DIST_KERNELS=0, M2DIST_FUSED=0
    MonarchGLU                RecomputingMonarchGLU, only with                 M2DIST_KERNELS=0, M2DIST_FUSED=0
                              M2DIST_MLP_RECOMPUTE=glu | mlp (the backward recomputes the GLU's output, or every
                              intermediate of the MLP; opt-in until measured on a GPU)
    MixerCore                 FusedMixerCore (whole core fused), or            M2DIST_KERNELS=0
                              LongConvKernelCore with M2DIST_FUSED=0 (per-op long-conv kernel only;
                              M2DIST_LONGCONV=fft | monarch picks it)
    nn.LayerNorm feeding a    FusedLayerNorm                                   M2DIST_KERNELS=0, M2DIST_FUSED=0
    matmul (below)

LayerNorms are not parameter-free, but the swap is the same in-place class change (``FusedLayerNorm`` subclasses
``nn.LayerNorm``: same parameters, same state-dict names). It applies only where the norm's output goes straight
into matmuls, because the kernel writes that output in the autocast dtype the matmul would cast it to, and only the
matmul may see it: a pre-norm block's two norms (the first one only before attention, or before an M2 mixer without
a residual long convolution, which would convolve the normalized input itself), an M2 mixer's own pre-norm (same
condition), the final norm before a language model's head and the masked-LM head's norm. Post-norm outputs (BERT's,
M2-BERT's) are the residual stream itself and keep the reference.

Why these modules and not the layers: they hold no parameters, so state-dict names are unchanged, and whatever
rewrites the layers around them -- tensor parallelism sharding a layer's parameters and swapping its class or
wrapping its forward, activation checkpointing, torch.compile -- leaves them in place, so the converter and those
passes compose in either order. Swapping the class (not the object) keeps any hook or attribute another pass put on
the module, and ``isinstance`` checks against the reference classes still hold.

The kernel-backed modules fall back to the reference forward where their kernel does not apply (CPU tensors, shapes
and dtypes a kernel does not cover), so a converted model runs anywhere and on CPU gives exactly the outputs of the
unconverted one. ``M2DIST_BLOCKDIAG`` (the block-diagonal kernel's backend, cuBLAS or Triton) stays inside that
kernel: it picks how the kernel runs, not whether.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from torch import nn

from m2dist.kernels import modules as km
from m2dist.models.attention import SelfAttention
from m2dist.models.bert import MaskedLMHead
from m2dist.models.blocks import PreNormBlock
from m2dist.models.dense_mlp import DenseMLP
from m2dist.models.gpt import CausalLM
from m2dist.models.monarch_mlp import GeluGLU, MonarchGLU
from m2dist.models.sequence_mixer import M2SequenceMixer, MixerCore
from m2dist.monarch.blockdiag import BlockDiagonalProduct
from m2dist.monarch.monarch_linear import MonarchProduct

MONARCH_CHOICES = ("auto", "kernel", "einsum")
LONG_CONV_CHOICES = ("fft", "monarch")
MLP_RECOMPUTE_CHOICES = ("none", "glu", "mlp")


@dataclass(frozen=True)
class KernelChoice:
    """Which kernels ``accelerate`` swaps in; ``from_env`` reads them from the environment."""

    enabled: bool = True  # M2DIST_KERNELS=0: none (the reference model, to compare against)
    fused: bool = True  # M2DIST_FUSED=0: no layer-level fusions (mixer core, GLU), the per-op kernels only
    monarch: str = "auto"  # M2DIST_MONARCH: auto (timed per shape), kernel, einsum (the layer's own path)
    long_conv: str = "fft"  # M2DIST_LONGCONV: fft (cuFFT), monarch (opt-in; slower in its first GPU measurement,
    # benchmarks/NOTES.md attempt 10); used where the whole mixer core is not fused
    mlp_recompute: str = "none"  # M2DIST_MLP_RECOMPUTE: none, glu (the GLU's output), mlp (all the MLP keeps)

    def __post_init__(self):
        if self.monarch not in MONARCH_CHOICES:
            raise ValueError(f"M2DIST_MONARCH must be one of {MONARCH_CHOICES}, got {self.monarch!r}")
        if self.mlp_recompute not in MLP_RECOMPUTE_CHOICES:
            raise ValueError(f"M2DIST_MLP_RECOMPUTE must be one of {MLP_RECOMPUTE_CHOICES}, got {self.mlp_recompute!r}")
        if self.long_conv not in LONG_CONV_CHOICES:
            raise ValueError(f"M2DIST_LONGCONV must be one of {LONG_CONV_CHOICES}, got {self.long_conv!r}")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "KernelChoice":
        env = os.environ if environ is None else environ
        return cls(enabled=env.get("M2DIST_KERNELS", "1") != "0", fused=env.get("M2DIST_FUSED", "1") != "0",
                   monarch=env.get("M2DIST_MONARCH", "auto"), long_conv=env.get("M2DIST_LONGCONV", "fft"),
                   mlp_recompute=env.get("M2DIST_MLP_RECOMPUTE", "none"))


def _swap(module: nn.Module, choice: KernelChoice) -> None:
    """Swap one reference module's class for its kernel-backed subclass (exact types only: a module already
    converted, or a subclass written by someone else, is left as it is)."""
    cls = type(module)
    if cls is BlockDiagonalProduct:
        module.__class__ = km.BlockDiagonalKernel
    elif cls is MonarchProduct and choice.monarch != "einsum":
        module.__class__ = km.MonarchKernel
        module.choice = choice.monarch
    elif cls is GeluGLU and choice.fused:
        module.__class__ = km.FusedGeluGLU
    elif cls is MonarchGLU and choice.fused and choice.mlp_recompute != "none":
        module.__class__ = km.RecomputingMonarchGLU
        module.recompute = choice.mlp_recompute
    elif cls is MixerCore:
        module.__class__ = km.FusedMixerCore if choice.fused else km.LongConvKernelCore
        module.long_conv_kernel = choice.long_conv


def _feeds_matmul_only(mixer_or_mlp: nn.Module) -> bool:
    """The module's input goes only into its first matmul (an input projection)."""
    if isinstance(mixer_or_mlp, M2SequenceMixer):
        return mixer_or_mlp.norm is None and mixer_or_mlp.residual_filter is None
    return isinstance(mixer_or_mlp, (SelfAttention, DenseMLP, MonarchGLU))


def norms_feeding_matmuls(model: nn.Module) -> list[nn.LayerNorm]:
    """The LayerNorms whose output only matmuls read (the table in the module docstring)."""
    found = []
    for module in model.modules():
        if isinstance(module, PreNormBlock):
            found += [norm for norm, consumer in ((module.norm1, module.mixer), (module.norm2, module.mlp))
                      if _feeds_matmul_only(consumer)]
        elif isinstance(module, M2SequenceMixer) and module.norm is not None and module.residual_filter is None:
            found.append(module.norm)
        elif isinstance(module, (CausalLM, MaskedLMHead)):
            found.append(module.norm)
    return [norm for norm in found if type(norm) is nn.LayerNorm]


def accelerate(model: nn.Module, choice: Optional[KernelChoice] = None) -> nn.Module:
    """Swap the fused kernels into ``model`` (in place; returns it). ``choice`` defaults to
    ``KernelChoice.from_env()``. Call it once the model is built, before or after tensor parallelism and before
    ``torch.compile``."""
    choice = KernelChoice.from_env() if choice is None else choice
    if choice.enabled:
        for module in model.modules():
            _swap(module, choice)
        if choice.fused:
            for norm in norms_feeding_matmuls(model):
                norm.__class__ = km.FusedLayerNorm
    return model
