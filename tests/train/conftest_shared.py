"""Fixtures for the trainer and checkpoint tests (tests/checkpoint/conftest.py re-exports them): the prepared
sample data, tiny run configs pointing at it, and shared training runs (each made once per session, on disk)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import m2dist_run  # noqa: E402


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    cache = Path(os.environ.get("M2DIST_TEST_CACHE", tmp_path_factory.getbasetemp().parent))
    return m2dist_run.prepare_sample_data(cache)


def write_config(path: Path, preset: str, data: Path, kind: str, **sections) -> str:
    """A run config extending configs/models/<preset>.yaml with the sample data and small trainer settings."""
    import yaml

    cfg = {
        "extends": [str(m2dist_run.REPO / "configs/models" / f"{preset}.yaml")],
        "data": {"path": str(data / ("mds/imagenet" if kind == "image" else "mds/pile")), "kind": kind},
        "optimizer": {"lr": 3.0e-3},
        "schedule": {"warmup_steps": 2, "decay": "cosine", "min_lr_ratio": 0.1},
        "logging": {"every": 1, "tensorboard": False, "sample_ids": True},
        "checkpoint": {"every": 10, "keep_last": 3},
    }
    if kind != "image":
        cfg["data"]["tokenizer"] = str(data / "tok.model")
        cfg["model"] = {"vocab_size": 0}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="session")
def configs(sample_data, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.getbasetemp() / "configs"
    root.mkdir(exist_ok=True)
    lm = {"trainer": {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 20}}
    return {
        "gpt": write_config(root / "gpt.yaml", "m2-gpt-tiny", sample_data, "causal_lm", **lm),
        "bert": write_config(root / "bert.yaml", "m2-bert-tiny", sample_data, "mlm", **lm),
        "vit": write_config(root / "vit.yaml", "m2-vit-tiny", sample_data, "image",
                            trainer={"global_batch_size": 6, "micro_batch_size": 3, "max_steps": 12}),
    }


# name -> (config, nproc, overrides). The M2-GPT runs are the references the checkpoint tests compare against.
RUNS = {
    # 20 uninterrupted steps, DP=2, ZeRO-0, checkpoints at 10 and 20; TensorBoard on for the metrics test.
    "gpt_dp2_z0": ("gpt", 2, ["logging.tensorboard=true"]),
    # The same global batch on one process (gradient accumulation 2).
    "gpt_dp1_z0": ("gpt", 1, ["checkpoint.every=0"]),
    "gpt_dp2_z1": ("gpt", 2, ["deepspeed.zero_stage=1", "checkpoint.every=0"]),
    # Gradients reduced after the backward, parameter by parameter (the default reduces from the backward hooks).
    "gpt_dp2_z1_no_overlap": ("gpt", 2, ["deepspeed.zero_stage=1", "deepspeed.overlap_comm=false",
                                         "checkpoint.every=0"]),
    # ZeRO-2 with checkpoints at 10 and 20: the source of the data-parallel reshard test.
    "gpt_dp2_z2": ("gpt", 2, ["deepspeed.zero_stage=2"]),
    # ZeRO-3, 20 steps, evaluation of the whole val split at 20: the source of the reshard and export tests.
    "gpt_dp2_z3": ("gpt", 2, ["deepspeed.zero_stage=3", "trainer.eval_every=20", "trainer.eval_steps=0"]),
    "bert_dp1_z0": ("bert", 1, ["checkpoint.every=0", "trainer.eval_every=20", "trainer.eval_steps=2"]),
    "bert_dp2_z2": ("bert", 2, ["deepspeed.zero_stage=2", "checkpoint.every=0"]),
    # Tensor parallel 2 (DP=1, accumulation 2, ZeRO-1) through the trainer: same trajectory as gpt_dp1_z0;
    # checkpoints at 10 (resharded to TP1 x DP2) and 20 (exported and evaluated on one device).
    "gpt_tp2": ("gpt", 2, ["parallel.tensor=2", "deepspeed.zero_stage=1", "trainer.eval_every=20",
                           "trainer.eval_steps=0"]),
    "vit_dp1": ("vit", 1, ["checkpoint.every=0", "trainer.eval_every=12", "trainer.eval_steps=0"]),
}


@pytest.fixture(scope="session")
def run(configs, tmp_path_factory):
    """``run(name)`` -> the run dir of a shared run (made on first use)."""
    # M2DIST_TEST_RUNS keeps the shared runs between sessions (local iteration); by default they are per session.
    root = Path(os.environ["M2DIST_TEST_RUNS"]) if os.environ.get("M2DIST_TEST_RUNS") else \
        tmp_path_factory.getbasetemp() / "runs"

    def get(name: str) -> Path:
        config, nproc, overrides = RUNS[name]
        return m2dist_run.cached_run(root, name, configs[config], overrides, nproc)

    return get
