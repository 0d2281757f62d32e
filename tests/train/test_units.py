"""Fast unit tests of the trainer's pure parts: LR schedule, generated ds_config, activation-checkpointing option."""

from __future__ import annotations

import json

import pytest
import torch

from m2dist.config import load_config
from m2dist.config.schema import Config, ScheduleConfig
from m2dist.train.ds_config import OVERLAP_BUCKET_ELEMENTS, build_ds_config, gradient_accumulation_steps
from m2dist.train.schedule import lr_multiplier


def test_schedule_warmup_then_decay_to_floor():
    cos = ScheduleConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    assert [lr_multiplier(s, cos, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, cos, 104) == pytest.approx(1.0)
    assert lr_multiplier(54, cos, 104) == pytest.approx(0.55)  # half-way: floor + (1 - floor) / 2
    assert lr_multiplier(104, cos, 104) == pytest.approx(0.1)
    assert lr_multiplier(500, cos, 104) == pytest.approx(0.1)  # stays at the floor past max_steps
    lin = ScheduleConfig(warmup_steps=0, decay="linear", min_lr_ratio=0.02)
    assert lr_multiplier(0, lin, 100) == 1.0 and lr_multiplier(50, lin, 100) == pytest.approx(0.51)
    assert lr_multiplier(100, lin, 100) == pytest.approx(0.02)
    assert lr_multiplier(7, ScheduleConfig(decay="constant"), 100) == 1.0


def test_ds_config_from_m2dist_config(tmp_path):
    cfg = load_config(None, ["trainer.global_batch_size=64", "trainer.micro_batch_size=4", "deepspeed.zero_stage=3",
                             "trainer.grad_clip=0.5"])
    assert gradient_accumulation_steps(cfg, 4) == 4
    ds = build_ds_config(cfg, 4, "cpu")
    assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 4 and ds["zero_optimization"] == {"stage": 3}
    assert ds["gradient_clipping"] == 0.5 and "bf16" not in ds  # fp32 on CPU
    # GPU default: fp32 weights under DeepSpeed's torch autocast, every gradient reduced in fp32.
    on_gpu = build_ds_config(cfg, 4, "cuda:0")
    assert "bf16" not in on_gpu
    assert on_gpu["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    cfg.deepspeed.precision = "bf16"  # DeepSpeed's own bf16 mode, on request
    assert build_ds_config(cfg, 4, "cuda:0")["bf16"] == {"enabled": True}
    cfg.deepspeed.precision = "auto"
    # Overlapped reduction (the default): ZeRO-1/2's bucket settings; ZeRO-3 overlaps by itself, stage 0 has no
    # buckets.
    cfg.deepspeed.zero_stage = 1
    assert build_ds_config(cfg, 4, "cpu")["zero_optimization"] == {
        "stage": 1, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": OVERLAP_BUCKET_ELEMENTS}
    cfg.deepspeed.zero_stage = 0
    assert build_ds_config(cfg, 4, "cpu")["zero_optimization"] == {"stage": 0}
    cfg.deepspeed.zero_stage = 2
    assert build_ds_config(cfg, 4, "cpu")["zero_optimization"]["overlap_comm"]
    cfg.deepspeed.overlap_comm = False
    assert build_ds_config(cfg, 4, "cpu")["zero_optimization"] == {"stage": 2}
    cfg.deepspeed.zero_stage = 3  # off means off for ZeRO-3 too, whose DeepSpeed default is on
    assert build_ds_config(cfg, 4, "cpu")["zero_optimization"] == {"stage": 3, "overlap_comm": False}
    cfg.deepspeed.overlap_comm = True
    with pytest.raises(ValueError, match="not a multiple"):
        gradient_accumulation_steps(cfg, 3)
    # A user's own ds_config: used as given, batch keys filled in or checked.
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"train_batch_size": "auto", "zero_optimization": {"stage": 2, "overlap_comm": True}}))
    cfg.deepspeed.config_file = str(own)
    ds = build_ds_config(cfg, 4, "cpu")
    assert ds["zero_optimization"]["overlap_comm"] and ds["train_batch_size"] == 64
    own.write_text(json.dumps({"train_batch_size": 32}))
    with pytest.raises(ValueError, match="disagrees"):
        build_ds_config(cfg, 4, "cpu")


def test_activation_checkpointing_keeps_names_and_gradients():
    from m2dist.models import build_model
    from m2dist.train.layer_options import apply_layer_options

    cfg = load_config(str(__import__("m2dist_run").REPO / "configs/models/m2-gpt-tiny.yaml"))
    torch.manual_seed(0)
    plain = build_model(cfg.model)
    torch.manual_seed(0)
    wrapped = build_model(cfg.model)
    cfg.trainer.activation_checkpointing = True
    apply_layer_options(wrapped, cfg)
    assert list(plain.state_dict()) == list(wrapped.state_dict())  # checkpoints do not depend on the option
    ids = torch.randint(0, cfg.model.vocab_size, (2, 32))
    for m in (plain, wrapped):
        m(ids).float().pow(2).mean().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), wrapped.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


def _steps(path):
    return [(r["step"], "eval_loss" in r) for r in map(json.loads, path.read_text().splitlines())]


def test_metrics_jsonl_keeps_each_step_once_across_restarts(tmp_path):
    """Issue 14.8: a run killed at step 12 and resumed from its step-10 checkpoint, then restarted from an older
    (step-5) checkpoint, then re-run from scratch, left steps 5, 10, 10, 10, 5, 10, 12 in metrics.jsonl."""
    from m2dist.train.metrics import MetricsLogger

    def run(start, stop, evals=()):
        logger = MetricsLogger(str(tmp_path), True, False, 20)
        logger.start(start)
        for step in range(start + 1, stop + 1):
            logger.log({"step": step, "loss": 1.0 / step, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1.0,
                        "mfu": None, "mem_gib": 0.1}, console=False)
            if step in evals:
                logger.log({"step": step, "eval_loss": 2.0}, console=False)
        logger.close()

    path = tmp_path / "metrics.jsonl"
    run(0, 12, evals=(10,))
    with open(path, "a") as fh:
        fh.write('{"step": 13, "lo')  # torn by the kill
    run(10, 14)  # resumed from step 10: 11 and 12 are redone, the torn line goes
    assert _steps(path) == [(s, False) for s in range(1, 11)] + [(10, True)] + [(s, False) for s in (11, 12, 13, 14)]
    run(5, 7)  # restarted from an older checkpoint (a fallback past a torn one)
    assert _steps(path) == [(s, False) for s in range(1, 8)]
    run(0, 3)  # a re-run from scratch in the same run dir
    assert _steps(path) == [(1, False), (2, False), (3, False)]
