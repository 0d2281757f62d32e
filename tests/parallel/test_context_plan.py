"""The plan's ``"cp"`` axis on a single process (no communication needed, or a 1-rank group): every parameter
replicated, the filters asked for a rank's tokens give the global length's taps of its channels, positions are
offset, and the CP core takes precedence over the kernel converter's cores in either order while running their long
conv. The multi-rank numerics are tests/parallel/test_context_conv.py (the core) and
tests/train/test_context_parallel.py (the trainer)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from m2dist.kernels import KernelChoice, accelerate, modules
from m2dist.models import build_model, preset_config
from m2dist.models.hyena_filter import ImplicitFilter
from m2dist.models.sequence_mixer import M2SequenceMixer
from m2dist.parallel.context_conv import context_channels
from m2dist.parallel.parallelize import parallelize
from m2dist.parallel.plan import REPLICATED, plan_for_model


def _model(preset: str):
    torch.manual_seed(0)
    return build_model(preset_config(preset, vocab_size=512))


@pytest.mark.parametrize("preset", ["m2-gpt-tiny", "m2-bert-tiny", "m2-vit-tiny"])
def test_cp_axis_replicates_every_parameter(preset):
    model = _model(preset)
    names = list(model.state_dict())
    parallelize(model, "cp", 1, 2)
    assert list(model.state_dict()) == names
    assert set(plan_for_model(model, "cp").values()) == {REPLICATED}


@pytest.mark.parametrize("rank", [0, 1])
def test_filters_give_the_global_taps_of_the_rank_channels(rank):
    model = _model("m2-bert-tiny")  # bidirectional: both MLPs
    filters = [m for m in model.modules() if isinstance(m, ImplicitFilter)]
    full = [f(128) for f in filters]
    parallelize(model, "cp", rank, 2)
    for f, (k_fwd, k_rev) in zip(filters, full):
        channels = context_channels(f.channels, rank, 2)
        mine = f(64)  # the rank's 64 tokens
        assert mine[0].shape == (f.channels // 2, 128)
        torch.testing.assert_close(mine[0], k_fwd[channels], rtol=1e-6, atol=0)
        torch.testing.assert_close(mine[1], k_rev[channels], rtol=1e-6, atol=0)


def test_positions_are_offset_per_rank():
    model = _model("m2-bert-tiny")
    table = model.embeddings.position.weight.detach().clone()
    parallelize(model, "cp", 1, 2)
    got = model.embeddings.position(torch.arange(64))
    assert torch.equal(got, table[64:128])


@pytest.fixture
def one_rank_group(monkeypatch, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    monkeypatch.setattr("m2dist.parallel.mappings.cp_group", lambda: dist.group.WORLD)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("order", ["accelerate_first", "parallelize_first"])
@pytest.mark.parametrize("fused", [True, False])
def test_cp_core_wins_over_the_kernel_cores_and_runs_their_long_conv(order, fused, one_rank_group, monkeypatch):
    choice = KernelChoice(fused=fused)
    model = _model("m2-bert-tiny")
    ids = torch.randint(5, 512, (2, 128))
    reference = model(ids)
    if order == "accelerate_first":
        parallelize(accelerate(model, choice), "cp", 0, 1)
    else:
        accelerate(parallelize(model, "cp", 0, 1), choice)
    cores = [m.core for m in model.modules() if isinstance(m, M2SequenceMixer)]
    assert all(type(c) is (modules.FusedMixerCore if fused else modules.LongConvKernelCore) for c in cores)
    calls = []
    real = modules.kernel_long_conv
    monkeypatch.setattr(modules, "kernel_long_conv", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    monkeypatch.setattr(modules.FusedMixerCore, "forward", lambda *a, **k: pytest.fail("the fused core ran"))
    out = model(ids)
    # Each layer's two long convs (main, residual) through the kernel's long conv, on (B, H/CP, L).
    assert calls == [torch.Size([2, 64, 128])] * (2 * len(cores))
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
