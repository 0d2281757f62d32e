"""Single-process checks of the shard metadata and the full <-> sharded state-dict maps (no process group needed)."""

from __future__ import annotations

import pytest
import torch

from m2dist.models import build_model, preset_config
from m2dist.parallel.sharding import (REPLICATED, ShardSpec, gather_state_dict, gather_tensor, reshard_state_dicts,
                                      shard_plan, shard_state_dict, shard_tensor)

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


def test_plan_names_the_m2_layouts():
    cfg = preset_config("m2-bert-tiny")
    plan = shard_plan(cfg)
    mixer, mlp = "layers.0.mixer.", "layers.0.mlp."
    assert plan[mixer + "in_proj.weight"] == ShardSpec(0, 3)
    assert plan[mixer + "short_conv.weight"] == ShardSpec(0, 3)
    assert plan[mixer + "out_proj.weight"] == ShardSpec(1, 1)
    assert plan[mixer + "out_proj.bias"] == REPLICATED
    for f in ("filter.", "residual_filter."):
        assert plan[mixer + f + "mlp_fwd.out.weight"] == ShardSpec(0, 1)
        assert plan[mixer + f + "mlp_rev.out.weight"] == ShardSpec(0, 1)
        assert plan[mixer + f + "D"] == ShardSpec(0, 1)
        assert plan[mixer + f + "z"] == REPLICATED and plan[mixer + f + "freq"] == REPLICATED
        assert plan[mixer + f + "mlp_fwd.layers.1.weight"] == REPLICATED
    assert plan[mlp + "gated_proj.weight"] == ShardSpec(0, 2)
    assert plan[mlp + "out_proj.weight"] == ShardSpec(0, 1) and plan[mlp + "out_proj.bias"] == ShardSpec(0, 1)
    assert plan["embeddings.token.weight"] == plan["head.decoder.weight"] == plan["head.decoder.bias"] == ShardSpec(0, 1)
    assert plan["embeddings.position.weight"] == REPLICATED and plan["layers.0.norm.weight"] == REPLICATED


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
    from m2dist.parallel.m2_layers import shard_monarch_glu_

    with pytest.raises(ValueError, match="must divide nblocks/2"):
        shard_monarch_glu_(MonarchGLU(64, 256, nblocks=4), 0, 4)
    with pytest.raises(NotImplementedError, match="blockdiag"):
        shard_monarch_glu_(MonarchGLU(64, 256, nblocks=4, mlp_type="monarch"), 0, 2)


@pytest.mark.parametrize("spec", [REPLICATED, ShardSpec(0, 1), ShardSpec(1, 1), ShardSpec(0, 3), ShardSpec(0, 2)])
def test_deepspeed_affine_map_agrees_with_shard_tensor(spec):
    """The affine maps handed to DeepSpeed's universal checkpoints cut and rebuild exactly like shard/gather."""
    pytest.importorskip("deepspeed.checkpoint.affine")
    from m2dist.parallel.sharding import affine_map

    full = torch.randn(24, 8)
    for size in (2, 4):
        amap = affine_map(spec, full.shape, size)
        amap.validate_coverage()
        shards = {r: shard_tensor(full, spec, r, size) for r in range(size)}
        for r in range(size):
            assert torch.equal(amap.extract(full, r).reshape(shards[r].shape), shards[r])
        assert torch.equal(amap.rebuild(shards).reshape(full.shape), full)
