"""``trainer.cuda_graphs`` (m2dist/train/layer_graphs.py): replayed layers compute what eager layers compute.

The reference is the same model run eager from the same weights: per step, two micro-batches of gradient
accumulation (the case where a graph's reused gradient buffers would corrupt ``.grad``), then an SGD step, so the
steps after the first also check that replays read the updated parameters. On CPU only the refusal is checked."""

from __future__ import annotations

import copy

import pytest
import torch

from m2dist.config import load_config
from m2dist.models import build_model
from m2dist.train.layer_options import apply_layer_options, cuda_graphs_on


def _cfg(*extra):
    return load_config(None, ["model.arch=m2_gpt", "model.hidden_size=64", "model.num_layers=3",
                              "model.intermediate_size=128", "model.vocab_size=97", "model.max_seq_len=64",
                              "model.filter_order=16", "trainer.cuda_graphs=true", *extra])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_cuda_graphs_without_a_gpu_is_one_clear_error():
    with pytest.raises(ValueError, match=r"trainer.cuda_graphs=true needs a CUDA device .*set trainer.cuda_graphs=false"):
        apply_layer_options(build_model(_cfg().model), _cfg())


def _steps(model, batches, mask, accumulate=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, grads = [], []
    for ids in batches:
        for part, keep in zip(ids.chunk(accumulate), [None] * accumulate if mask is None else mask.chunk(accumulate)):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(part[:, :-1]) if mask is None else model(part[:, :-1], keep)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), part[:, 1:].flatten())
            (loss / accumulate).backward()
            losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["m2_gpt", "gpt", "m2_bert"])
def test_replayed_layers_train_like_eager_ones(arch):
    cfg = _cfg(f"model.arch={arch}", "model.num_heads=4")
    torch.manual_seed(0)
    eager = build_model(cfg.model).cuda()
    graphed = apply_layer_options(copy.deepcopy(eager), cfg)
    ids = torch.randint(0, cfg.model.vocab_size, (5, 8, cfg.model.max_seq_len + 1), device="cuda")
    mask = None
    if arch == "m2_bert":  # padded samples: the mask is a graph input too
        mask = torch.ones(8, cfg.model.max_seq_len, dtype=torch.long, device="cuda")
        mask[1, 40:] = mask[6, 10:] = 0
    ref_losses, ref_grads = _steps(eager, ids, mask)
    losses, grads = _steps(graphed, ids, mask)
    layers = next(m for m in graphed.modules() if isinstance(m, torch.nn.ModuleList))
    # The replay engaged (captured at the second forward): the LayerGraphs object the layer's forward closes over.
    assert any(getattr(c.cell_contents, "captured", None) for c in layers[0].forward.__closure__)
    assert losses[0] == ref_losses[0]  # the first forward runs eager
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= 2e-4 * abs(b), (losses, ref_losses)
    for g, r in zip(grads, ref_grads):  # a gradient doubled by a reused buffer would be ~50% off
        assert (g - r).norm() <= 1e-2 * r.norm(), ((g - r).norm(), r.norm())
    graphed.eval()
    with torch.no_grad():  # eval runs eager, any batch size
        assert graphed(ids[0, :3, :-1]).shape == (3, cfg.model.max_seq_len, cfg.model.vocab_size)


@pytest.mark.parametrize("extra, on", [((), True), (("model.arch=m2_bert",), True), (("model.arch=gpt",), False),
                                       (("trainer.activation_checkpointing=true",), False),
                                       (("deepspeed.zero_stage=3",), False), (("trainer.device=cpu",), False),
                                       (("trainer.cuda_graphs=false",), False),
                                       (("model.arch=gpt", "trainer.cuda_graphs=true"), True)])
def test_auto_graphs_are_on_for_m2_on_a_gpu_unless_something_clashes(monkeypatch, extra, on):
    """The default, ``auto``: loads whatever else is set (a clash is an error only with ``true``) and resolves on
    for M2 models where a CUDA device trains and nothing clashes."""
    cfg = load_config(None, ["model.arch=m2_gpt", *extra])
    assert cfg.trainer.cuda_graphs == {"trainer.cuda_graphs=false": False, "trainer.cuda_graphs=true": True}.get(
        extra[-1] if extra else "", "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_graphs_on(cfg) is on
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_graphs_on(cfg) is (cfg.trainer.cuda_graphs is True)  # true without a GPU: apply's clear error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_odd_input_between_captured_ones_costs_no_capture(monkeypatch):
    """Captured at the second forward in a row with one input; a different input now and then (an unpadded MLM
    batch among padded ones) runs eager and is not captured on its second, non-consecutive, appearance."""
    from m2dist.train import layer_graphs

    cfg = _cfg()
    torch.manual_seed(0)
    model = apply_layer_options(build_model(cfg.model).cuda(), cfg)
    captures = []
    real = layer_graphs.LayerGraphs._capture
    monkeypatch.setattr(layer_graphs.LayerGraphs, "_capture", lambda self, *a: captures.append(1) or real(self, *a))
    ids = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.max_seq_len), device="cuda")
    for batch in (2, 2, 3, 2, 3, 2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(ids[:1].expand(batch, -1)).float().sum().backward()
    assert len(captures) == 1
