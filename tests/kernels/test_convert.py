"""``m2dist.kernels.accelerate``: which modules it swaps under each choice, that a converted model gives exactly the
unconverted one's outputs on CPU (the fallbacks), that the swapped modules run their kernels (through the
interpreter, forced on), and that it composes with passes that rewrite the layers from outside."""
import copy

import pytest
import torch
from torch import nn

from m2dist.kernels import KernelChoice, accelerate, modules
from m2dist.kernels import block_diagonal, fft_conv, glu, mixer_core, monarch_matmul
from m2dist.models import from_preset
from m2dist.models.blocks import M2BertLayer, PreNormBlock
from m2dist.models.monarch_mlp import GeluGLU, MonarchGLU
from m2dist.models.sequence_mixer import M2SequenceMixer, MixerCore
from m2dist.monarch import BlockDiagonalLinear, MonarchLinear
from m2dist.monarch.blockdiag import BlockDiagonalProduct
from m2dist.monarch.monarch_linear import MonarchProduct
from tests.kernels._ref import rel_err

TINY = ["m2-bert-tiny", "m2-gpt-tiny", "m2-vit-tiny", "bert-tiny", "gpt-tiny"]


def _expected_swaps(choice: KernelChoice) -> dict:
    """Written out per choice, independently of ``convert._swap``."""
    if not choice.enabled:
        return {}
    swaps = {BlockDiagonalProduct: modules.BlockDiagonalKernel,
             MixerCore: modules.FusedMixerCore if choice.fused else modules.LongConvKernelCore}
    if choice.monarch != "einsum":
        swaps[MonarchProduct] = modules.MonarchKernel
    if choice.fused:
        swaps[GeluGLU] = modules.FusedGeluGLU
    return swaps


def _expected_fused_norms(name: str, model, choice: KernelChoice) -> set:
    """The LayerNorms whose output only a matmul reads, by module name, written out per preset: pre-norm blocks'
    two norms (the tiny M2-GPT/ViT mixers have no residual long conv), the LM's final norm, the MLM head's norm."""
    if not (choice.enabled and choice.fused):
        return set()
    blocks = {f"blocks.{i}.norm{j}" for i in range(len(getattr(model, "blocks", []))) for j in (1, 2)}
    return {"m2-gpt-tiny": blocks | {"norm"}, "gpt-tiny": blocks | {"norm"}, "m2-vit-tiny": blocks,
            "bert-tiny": {"head.norm"}, "m2-bert-tiny": {"head.norm"}}[name]


CHOICES = [KernelChoice(), KernelChoice(fused=False), KernelChoice(monarch="einsum"),
           KernelChoice(enabled=False), KernelChoice(monarch="kernel", long_conv="monarch")]


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: f"{c.enabled}-{c.fused}-{c.monarch}-{c.long_conv}")
@pytest.mark.parametrize("name,overrides", [(n, {}) for n in TINY] + [("m2-gpt-tiny", {"mlp_type": "monarch"})])
def test_swaps_exactly_the_compute_modules(name, overrides, choice):
    model = from_preset(name, **overrides)
    before = {n: (m, type(m)) for n, m in model.named_modules()}
    state = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    assert accelerate(model, choice) is model
    swaps = _expected_swaps(choice)
    norms = _expected_fused_norms(name, model, choice)

    def expected(n, cls):
        return modules.FusedLayerNorm if n in norms else swaps.get(cls, cls)

    after = dict(model.named_modules())
    assert after.keys() == before.keys()
    swapped = 0
    for n, (m, cls) in before.items():
        assert after[n] is m  # the same objects: swapped in place
        assert type(m) is expected(n, cls), n
        assert isinstance(m, cls)
        swapped += cls in swaps
    assert swapped == sum(type(m) in swaps.values() for m in model.modules())
    assert {n for n, m in model.named_modules() if isinstance(m, modules.FusedLayerNorm)} == norms
    if choice.enabled and name.startswith("m2"):
        assert swapped > 0
    new_state = model.state_dict(keep_vars=True)
    assert new_state.keys() == state.keys() and all(new_state[k] is state[k] for k in state)
    for m in model.modules():
        if isinstance(m, modules.MonarchKernel):
            assert m.choice == choice.monarch
        if isinstance(m, modules.LongConvKernelCore):
            assert m.long_conv_kernel == choice.long_conv
    accelerate(model, choice)  # a second pass changes nothing
    assert {n: type(m) for n, m in model.named_modules()} == {n: expected(n, c) for n, (_, c) in before.items()}


def test_norms_before_a_residual_long_conv_keep_the_reference():
    """An M2 mixer with a residual long conv convolves its normalized input itself: the norm before it stays."""
    block = PreNormBlock(M2SequenceMixer(8, 16, causal=True, filter_order=4, residual_long_conv=True),
                         MonarchGLU(8, 16, nblocks=2), 8, 1e-5)
    own = M2SequenceMixer(8, 16, causal=True, filter_order=4, residual_long_conv=False, pre_norm=True)
    accelerate(block, KernelChoice())
    accelerate(own, KernelChoice())
    assert type(block.norm1) is nn.LayerNorm and type(block.norm2) is modules.FusedLayerNorm
    assert type(own.norm) is modules.FusedLayerNorm


def test_choice_from_env():
    assert KernelChoice.from_env({}) == KernelChoice()
    env = {"M2DIST_KERNELS": "0", "M2DIST_FUSED": "0", "M2DIST_MONARCH": "einsum", "M2DIST_LONGCONV": "monarch"}
    assert KernelChoice.from_env(env) == KernelChoice(enabled=False, fused=False, monarch="einsum", long_conv="monarch")
    with pytest.raises(ValueError, match="M2DIST_MONARCH"):
        KernelChoice.from_env({"M2DIST_MONARCH": "kernels"})
    with pytest.raises(ValueError, match="M2DIST_LONGCONV"):
        KernelChoice.from_env({"M2DIST_LONGCONV": "cufft"})


def _inputs(model):
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    if cfg.arch.endswith("vit"):
        return (torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g),)
    ids = torch.randint(1, cfg.vocab_size, (2, 24), generator=g)
    if cfg.arch.endswith("bert"):
        mask = torch.ones(2, 24, dtype=torch.long)
        mask[1, 18:] = 0
        return ids, mask
    return (ids,)


def _outputs_and_grads(model, inputs):
    model.zero_grad()
    out = model(*inputs)
    (out.float() * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return out.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("name,overrides", [(n, {}) for n in TINY[:3]] + [("m2-bert-tiny", {"mlp_type": "monarch"})])
def test_converted_model_matches_on_cpu(name, overrides):
    """On CPU tensors every kernel-backed module takes its reference path: outputs and gradients are identical."""
    torch.manual_seed(0)
    model = from_preset(name, dropout=0.0, **overrides)
    converted = accelerate(copy.deepcopy(model), KernelChoice(monarch="kernel"))
    assert any(isinstance(m, modules.FusedMixerCore) for m in converted.modules())
    inputs = _inputs(model)
    y_ref, g_ref = _outputs_and_grads(model, inputs)
    y, g = _outputs_and_grads(converted, inputs)
    assert torch.equal(y, y_ref)
    for a, r in zip(g, g_ref):
        assert torch.equal(a, r)


def _spy(monkeypatch, module, name) -> list:
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.fixture
def forced(monkeypatch):
    """Kernels forced on for CPU tensors (they run through the interpreter), with a spy on each kernel entry."""
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)
    return {name: _spy(monkeypatch, mod, name) for mod, name in (
        (block_diagonal, "block_diagonal_matmul"), (monarch_matmul, "monarch_matmul"), (glu, "gelu_glu"),
        (mixer_core, "fused_mixer_core"), (fft_conv, "fft_long_conv"))}


def _tiny_layer():
    torch.manual_seed(0)
    return M2BertLayer(M2SequenceMixer(8, 16, causal=False, filter_order=4), MonarchGLU(8, 16, nblocks=2), 8, 1e-12)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per_op"])
def test_swapped_layer_runs_the_kernels(forced, fused):
    layer = _tiny_layer()
    x = torch.randn(2, 16, 8)
    y_ref = layer(x)
    y = accelerate(layer, KernelChoice(fused=fused))(x)
    assert rel_err(y, y_ref) < 1e-5
    assert bool(forced["fused_mixer_core"]) == fused and bool(forced["gelu_glu"]) == fused
    assert bool(forced["fft_long_conv"]) != fused  # the per-op path's long convs (the fused core has its own)
    assert not forced["block_diagonal_matmul"]  # fp32 outside autocast: the einsum path (_kernel_inputs)


@pytest.mark.parametrize("layer_type,kernel", [(BlockDiagonalLinear, "block_diagonal_matmul"),
                                               (MonarchLinear, "monarch_matmul")])
def test_swapped_monarch_layers_run_the_kernels(forced, layer_type, kernel):
    torch.manual_seed(0)
    layer = layer_type(16, 24, 2).to(torch.bfloat16)
    x = torch.randn(5, 16).to(torch.bfloat16)
    y_ref = layer(x).float()
    y = accelerate(layer, KernelChoice(monarch="kernel"))(x)
    assert forced[kernel] and y.dtype == torch.bfloat16
    assert rel_err(y.float(), y_ref) < 1e-2


class _OutsideBlockDiagonal(BlockDiagonalLinear):
    """What a parallel pass does to a layer: its class swapped for a subclass whose forward wraps the original."""

    def forward(self, x):
        return super().forward(x) * 2


def _outside_pass(layer: M2BertLayer, seen: list) -> None:
    """Rewrites around the compute modules, as tensor parallelism and activation checkpointing do: a parent's class
    swapped, a hook on the mixer core, a parent's forward replaced by an instance attribute."""
    layer.mlp.out_proj.__class__ = _OutsideBlockDiagonal
    layer.mixer.core.register_forward_pre_hook(lambda mod, args: seen.append("core") and None)
    inner = layer.mlp.forward
    layer.mlp.forward = lambda h: seen.append("mlp") or inner(h)


@pytest.mark.parametrize("converter_first", [True, False], ids=["accelerate_first", "outside_first"])
def test_composes_with_passes_from_outside(forced, converter_first):
    layer = _tiny_layer()
    x = torch.randn(2, 16, 8, dtype=torch.bfloat16)
    reference = copy.deepcopy(layer).to(torch.bfloat16)
    seen_ref = []
    _outside_pass(reference, seen_ref)
    y_ref = reference(x)
    layer = layer.to(torch.bfloat16)
    seen = []
    if converter_first:
        accelerate(layer)
        _outside_pass(layer, seen)
    else:
        _outside_pass(layer, seen)
        accelerate(layer)
    y = layer(x)
    assert isinstance(layer.mlp.out_proj, _OutsideBlockDiagonal)
    assert isinstance(layer.mlp.out_proj.product, modules.BlockDiagonalKernel)
    assert isinstance(layer.mixer.core, modules.FusedMixerCore)
    assert seen == seen_ref == ["core", "mlp"]
    assert forced["fused_mixer_core"] and forced["gelu_glu"] and forced["block_diagonal_matmul"]
    assert rel_err(y.float(), y_ref.float()) < 2e-2


def test_converted_layer_survives_parameter_sharding():
    """Parameters replaced by smaller ones (a tensor-parallel shard of whole blocks) after conversion: the
    kernel-backed product reads the shapes from the weights it is given."""
    layer = accelerate(BlockDiagonalLinear(16, 24, 4))
    full = layer.weight.detach().clone()
    layer.weight = nn.Parameter(full[:2].clone())
    layer.bias = nn.Parameter(torch.zeros(12))
    x = torch.randn(3, 8)
    ref = torch.einsum("...bp,bqp->...bq", x.reshape(3, 2, 4), full[:2]).reshape(3, 12)
    assert rel_err(layer(x), ref) < 1e-6
