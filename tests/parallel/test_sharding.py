"""Single-process checks of the plan, the shard metadata derived from it and the full <-> sharded state-dict maps
(no process group needed: ``parallelize`` only slices and installs hooks; the forwards run in tp_worker.py).

The specs are read from ``m2dist.parallel.plan``, never retyped here; what is checked independently is what they must
mean: each rank's pieces of one layer cover the *same* channels / heads / block pairs, the ranks' pieces partition
the full tensors, and the live sharded model holds exactly ``shard_state_dict`` of the single-device one.
"""

from __future__ import annotations

import pytest
import torch

from m2dist.models import build_model, preset_config
from m2dist.parallel.parallelize import parallelize
from m2dist.parallel.plan import PLAN, REPLICATED, ShardSpec, entry_of, has_tensor, plan_for_model, shard_plan
from m2dist.parallel.sharding import (gather_state_dict, gather_tensor, reshard_state_dicts, shard_state_dict,
                                      shard_tensor)

PRESETS = ["m2-gpt-tiny", "m2-bert-tiny", "m2-vit-tiny", "gpt-tiny", "bert-tiny", "vit-tiny"]


def _full(name, **overrides):
    torch.manual_seed(0)
    cfg = preset_config(name, **overrides)
    return cfg, build_model(cfg).state_dict()


@pytest.mark.parametrize("name", PRESETS)
def test_shard_then_gather_is_exact(name):
    cfg, full = _full(name, nblocks=8) if name.startswith("m2") else _full(name)
    for size in (1, 2, 4):
        shards = [shard_state_dict(full, r, size, cfg) for r in range(size)]
        back = gather_state_dict(shards, cfg)
        assert set(back) == set(full)
        for k in full:
            assert torch.equal(back[k], full[k]), (name, size, k)


def test_reshard_across_sizes_is_exact():
    cfg, full = _full("m2-bert-tiny", nblocks=8)
    tp2 = [shard_state_dict(full, r, 2, cfg) for r in range(2)]
    tp4 = reshard_state_dicts(tp2, cfg, 4)
    assert all(torch.equal(a, b) for r in range(4) for a, b in
               zip(tp4[r].values(), shard_state_dict(full, r, 4, cfg).values()))
    tp1 = reshard_state_dicts(tp4, cfg, 1)
    assert all(torch.equal(tp1[0][k], full[k]) for k in full)


def _layer(model, cls):
    return next(m for m in model.modules() if isinstance(m, cls))


def _ids_of(full: torch.Tensor, spec: ShardSpec, rank: int, size: int, period: int) -> list[int]:
    """The entries (rows along ``spec.dim``, counted modulo ``period``) that rank ``rank`` holds of ``full``."""
    index = torch.arange(full.shape[spec.dim], dtype=torch.float32)
    shape = [1] * full.dim()
    shape[spec.dim] = -1
    labelled = index.view(shape).expand(full.shape)
    piece = shard_tensor(labelled, spec, rank, size)
    return sorted({int(v) % period for v in piece.movedim(spec.dim, 0).reshape(piece.shape[spec.dim], -1)[:, 0]})


@pytest.mark.parametrize("size", [2, 4])
def test_mixer_pieces_are_the_same_channels(size):
    """in_proj's x1, x2 and v rows, the short conv, out_proj's input columns, each filter's output rows and D, and the
    residual input the core is fed: one rank, one channel set; over the ranks, every channel once."""
    from m2dist.models.hyena_filter import ImplicitFilter
    from m2dist.models.sequence_mixer import M2SequenceMixer
    from m2dist.parallel.mappings import own_chunks

    model = build_model(preset_config("m2-bert-tiny"))
    mixer = _layer(model, M2SequenceMixer)
    h = mixer.hidden_size
    mixer_plan, filter_plan = entry_of(mixer, "tp"), entry_of(_layer(model, ImplicitFilter), "tp")
    seen = []
    for r in range(size):
        channels = _ids_of(mixer.in_proj.weight, mixer_plan.params["in_proj.weight"], r, size, h)
        assert len(channels) == h // size
        # x1 | x2 | v: the rank's rows are the same channels of each third.
        rows = _ids_of(mixer.in_proj.weight, mixer_plan.params["in_proj.weight"], r, size, 3 * h)
        assert rows == sorted(c + part * h for part in range(3) for c in channels)
        for name in ("in_proj.bias", "short_conv.weight", "short_conv.bias"):
            assert _ids_of(mixer.get_parameter(name), mixer_plan.params[name], r, size, 3 * h) == rows, name
        assert _ids_of(mixer.out_proj.weight, mixer_plan.params["out_proj.weight"], r, size, h) == channels
        for f in (mixer.filter, mixer.residual_filter):
            for name in ("mlp_fwd.out.weight", "mlp_rev.out.weight", "D"):
                assert _ids_of(f.get_parameter(name), filter_plan.params[name], r, size, h) == channels, name
            assert _ids_of(f.decay, filter_plan.params["decay"], r, size, h) == channels
        residual = mixer_plan.params["out_proj.weight"]  # SliceInput(like="out_proj.weight") of the core's u
        assert own_chunks(torch.arange(h), residual.stride, r, size).tolist() == channels
        seen += channels
    assert sorted(seen) == list(range(h))


@pytest.mark.parametrize("nblocks,size", [(4, 2), (8, 2), (8, 4)])
def test_glu_pieces_pair_gate_with_value(nblocks, size):
    """A rank's gate blocks b come with their value partners b + nb/2, the out_proj blocks 2b, 2b+1 they feed (and
    those output channels' bias), and the input chunks the GLU's input is scattered to are those blocks' chunks."""
    from m2dist.models.monarch_mlp import MonarchGLU

    mlp = MonarchGLU(64, 256, nblocks=nblocks)
    plan = entry_of(mlp, "tp")
    half = nblocks // 2
    stride = plan.params["gated_proj.weight"].stride  # ScatterInput(like="gated_proj.weight")
    for r in range(size):
        blocks = _ids_of(mlp.gated_proj.weight, plan.params["gated_proj.weight"], r, size, nblocks)
        gates = [b for b in blocks if b < half]
        assert [b for b in blocks if b >= half] == [g + half for g in gates]
        assert _ids_of(mlp.out_proj.weight, plan.params["out_proj.weight"], r, size, nblocks) == sorted(
            o for g in gates for o in (2 * g, 2 * g + 1))
        per_block = 64 // nblocks
        bias_blocks = {c // per_block for c in _ids_of(mlp.out_proj.bias, plan.params["out_proj.bias"], r, size, 64)}
        assert sorted(bias_blocks) == sorted(o for g in gates for o in (2 * g, 2 * g + 1))
        chunks = torch.arange(nblocks).chunk(stride * size)
        assert sorted(int(c) for i in range(stride) for c in chunks[r + i * size]) == blocks


@pytest.mark.parametrize("size", [2, 4])
def test_attention_pieces_are_the_same_heads(size):
    from m2dist.models.attention import SelfAttention

    attn = SelfAttention(64, 4, causal=True)
    plan = entry_of(attn, "tp")
    seen = []
    for r in range(size):
        q_rows = _ids_of(attn.qkv_proj.weight, plan.params["qkv_proj.weight"], r, size, 64)
        rows = _ids_of(attn.qkv_proj.weight, plan.params["qkv_proj.weight"], r, size, 3 * 64)
        assert rows == sorted(c + part * 64 for part in range(3) for c in q_rows)  # q, k and v of the same heads
        assert len({c // 16 for c in q_rows}) == 4 // size and len(q_rows) == 64 // size  # whole heads
        assert _ids_of(attn.out_proj.weight, plan.params["out_proj.weight"], r, size, 64) == q_rows
        seen += q_rows
    assert sorted(seen) == list(range(64))


@pytest.mark.parametrize("name", ["m2-gpt-tiny", "m2-bert-tiny", "gpt-tiny", "bert-tiny"])
def test_vocab_rows_of_embedding_and_head_agree(name):
    cfg = preset_config(name, tie_embeddings=False)
    model = build_model(cfg)
    plan = plan_for_model(model)
    vocab = [k for k, v in plan.items() if not v.replicated and model.state_dict()[k].shape[0] == cfg.vocab_size]
    assert len(vocab) >= 2  # embedding and head
    for r in range(2):
        assert len({tuple(_ids_of(model.state_dict()[k], plan[k], r, 2, cfg.vocab_size)) for k in vocab}) == 1


def test_every_planned_name_exists_in_a_model():
    """A misspelt name in the plan would silently leave a parameter replicated: each one must exist in some
    preset's layer of that type."""
    presets = [preset_config(n) for n in PRESETS] + [preset_config("m2-bert-tiny", mixer_pre_norm=True)]
    models = [build_model(c) for c in presets]
    for entry in PLAN:
        for axis, plan in entry.axes.items():
            layers = [m for model in models for m in model.modules() if isinstance(m, entry.layer)]
            assert layers, entry.layer
            for rel in plan.params:
                assert any(has_tensor(m, rel) for m in layers), (entry.layer.__name__, rel)
            for path, _ in plan.each_style():
                assert not path or any(_has(m, path) for m in layers), (entry.layer.__name__, path)
            for like in [getattr(s, "like", None) for _, s in plan.each_style()]:
                assert like is None or like in plan.params


def _has(module, path):
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


@pytest.mark.parametrize("name", PRESETS)
def test_parallelized_model_holds_exactly_its_shards(name):
    """The live slicing and the state-dict map both follow the plan: every rank's parallelized model has the
    single-device model's keys with exactly ``shard_state_dict``'s values; tied parameters stay tied; the per-rank
    size attributes are set."""
    overrides = {"nblocks": 8} if name.startswith("m2") else {}
    cfg = preset_config(name, **overrides)
    torch.manual_seed(0)
    full = build_model(cfg).state_dict()
    for size in (2, 4):
        for r in range(size):
            torch.manual_seed(0)
            model = parallelize(build_model(cfg), "tp", r, size)
            local = model.state_dict()
            want = shard_state_dict(full, r, size, cfg)
            assert set(local) == set(want)
            for k in want:
                assert torch.equal(local[k], want[k]), (name, size, r, k)
            tied = [(a, b) for a, b in (("token.weight", "lm_head.weight"),
                                        ("embeddings.token.weight", "head.decoder.weight")) if a in local]
            for a, b in tied:
                assert model.get_parameter(a) is model.get_parameter(b)
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    assert (module.out_features, module.in_features) == tuple(module.weight.shape)


def test_plan_for_model_is_unchanged_by_parallelize():
    cfg = preset_config("m2-gpt-tiny")
    before = shard_plan(cfg)
    assert plan_for_model(parallelize(build_model(cfg), "tp", 1, 2)) == before
    assert any(v == REPLICATED for v in before.values()) and any(not v.replicated for v in before.values())


def test_in_proj_shard_takes_the_same_channels_of_x1_x2_v():
    h, size = 8, 2
    w = torch.arange(3 * h, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i
    for r in range(size):
        got = shard_tensor(w, ShardSpec(0, 3), r, size)[:, 0].tolist()
        sl = list(range(r * h // size, (r + 1) * h // size))
        assert got == [float(c + part * h) for part in range(3) for c in sl]


def test_glu_blocks_pair_gate_with_value():
    """nblocks=8, TP=2: rank 0 owns gate blocks 0,1 with value blocks 4,5 and out_proj blocks 0-3; rank 1 the rest."""
    nb, size = 8, 2
    w = torch.arange(nb, dtype=torch.float32)[:, None, None].repeat(1, 2, 2)
    assert shard_tensor(w, ShardSpec(0, 2), 0, size)[:, 0, 0].tolist() == [0, 1, 4, 5]
    assert shard_tensor(w, ShardSpec(0, 2), 1, size)[:, 0, 0].tolist() == [2, 3, 6, 7]
    assert shard_tensor(w, ShardSpec(0, 1), 1, size)[:, 0, 0].tolist() == [4, 5, 6, 7]
    pieces = [shard_tensor(w, ShardSpec(0, 2), r, size) for r in range(size)]
    assert torch.equal(gather_tensor(pieces, ShardSpec(0, 2)), w)


def test_glu_sharding_refuses_tp_beyond_block_pairs():
    from m2dist.models.monarch_mlp import MonarchGLU

    with pytest.raises(ValueError, match="must divide nblocks/2"):
        parallelize(MonarchGLU(64, 256, nblocks=4), "tp", 0, 4)
    with pytest.raises(NotImplementedError, match="blockdiag"):
        parallelize(MonarchGLU(64, 256, nblocks=4, mlp_type="monarch"), "tp", 0, 2)


def test_refusals_leave_the_model_untouched():
    cfg = preset_config("m2-gpt-tiny", vocab_size=1001)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="model.vocab_size=1001 is not divisible by parallel.tensor=2"):
        parallelize(model, "tp", 0, 2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="model.num_heads=4 is not divisible by parallel.tensor=3"):
        parallelize(build_model(preset_config("gpt-tiny", vocab_size=999)), "tp", 0, 3)


@pytest.mark.parametrize("spec", [REPLICATED, ShardSpec(0, 1), ShardSpec(1, 1), ShardSpec(0, 3), ShardSpec(0, 2)])
def test_deepspeed_affine_map_agrees_with_shard_tensor(spec):
    """The affine maps handed to DeepSpeed's universal checkpoints cut and rebuild exactly like shard/gather."""
    pytest.importorskip("deepspeed.checkpoint.affine")
    from m2dist.parallel.universal_checkpoint import affine_map

    full = torch.randn(24, 8)
    for size in (2, 4):
        amap = affine_map(spec, full.shape, size)
        amap.validate_coverage()
        shards = {r: shard_tensor(full, spec, r, size) for r in range(size)}
        for r in range(size):
            assert torch.equal(amap.extract(full, r).reshape(shards[r].shape), shards[r])
        assert torch.equal(amap.rebuild(shards).reshape(full.shape), full)
