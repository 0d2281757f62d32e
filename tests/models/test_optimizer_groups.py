"""Optimizer groups: the implicit-filter group really gets its own lr and weight decay."""

from __future__ import annotations

import copy

import torch

from m2dist.config.schema import OptimizerConfig
from m2dist.models import count_parameters, from_preset, optimizer_groups


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_groups_partition_the_parameters():
    model = from_preset("m2-bert-tiny")
    groups = optimizer_groups(model, OptimizerConfig(lr=1e-3, weight_decay=0.1, filter_lr=5e-4,
                                                     filter_weight_decay=0.0))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay", "filter"}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(model)
    filt = _names(model, by_name["filter"])
    assert filt and all(".filter." in n or ".residual_filter." in n for n in filt)
    assert any(n.endswith(".z") for n in filt) and any(n.endswith(".freq") for n in filt)
    assert any("mlp_fwd.out.weight" in n for n in filt) and any("mlp_rev.out.weight" in n for n in filt)
    assert not any(n.endswith(".D") for n in filt)
    no_decay = _names(model, by_name["no_decay"])
    assert "embeddings.token.weight" in no_decay and any(n.endswith("norm.weight") for n in no_decay)
    assert all(p.ndim >= 2 for p in by_name["decay"]["params"])
    assert by_name["filter"]["lr"] == 5e-4 and by_name["filter"]["weight_decay"] == 0.0
    assert by_name["decay"]["lr"] == 1e-3 and by_name["decay"]["weight_decay"] == 0.1
    assert by_name["no_decay"]["weight_decay"] == 0.0


def test_filter_lr_defaults_to_lr_and_baselines_have_no_filter_group():
    groups = optimizer_groups(from_preset("m2-gpt-tiny"), OptimizerConfig(lr=2e-3, filter_lr=None))
    assert {g["name"]: g["lr"] for g in groups}["filter"] == 2e-3
    assert "filter" not in {g["name"] for g in optimizer_groups(from_preset("gpt-tiny"), OptimizerConfig())}


def test_filter_group_is_applied_by_a_real_step():
    """One AdamW step with filter_lr=0: filter parameters stay put, everything else moves. Built on a
    deep copy of the model, the failure mode of the public code (spec §2.5)."""
    torch.manual_seed(0)
    model = copy.deepcopy(from_preset("m2-bert-tiny"))
    opt = torch.optim.AdamW(optimizer_groups(model, OptimizerConfig(lr=1e-2, filter_lr=0.0, filter_weight_decay=0.0)))
    filter_ids = {id(p) for g in opt.param_groups if g["name"] == "filter" for p in g["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 512, (2, 16))
    model(ids).logsumexp(-1).mean().backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        if id(p) in filter_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, name  # it had a gradient...
            assert not moved, name  # ...and lr 0 kept it
        elif name != "embeddings.token_type.weight":  # only row 0 of the type table is used
            assert moved, name
