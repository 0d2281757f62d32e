"""A user's mistake is one line on stderr naming the file, key or value, a non-zero exit, and no work done first:
the real command line in a subprocess, on real prepared data with one thing wrong at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
import m2dist_run as mr  # noqa: E402

REPO = mr.REPO
SMOKE = str(REPO / "configs/smoke/m2-gpt-tiny.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    cache = Path(os.environ.get("M2DIST_TEST_CACHE", tmp_path_factory.getbasetemp().parent))
    return mr.prepare_sample_data(cache)


def m2dist(*args, tmp: Path) -> subprocess.CompletedProcess:
    env = mr.base_env(tmp)
    return subprocess.run([sys.executable, "-m", "m2dist", *map(str, args)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("m2dist: error: "), proc.stderr[-4000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def train(tmp: Path, data: Path, *overrides, pile: Path | None = None) -> subprocess.CompletedProcess:
    base = [f"data.path={pile or data / 'mds/pile'}", f"data.tokenizer={data / 'tok.model'}",
            f"trainer.run_dir={tmp / 'run'}", f"checkpoint.dir={tmp / 'ckpt'}", "trainer.max_steps=2",
            "trainer.eval_every=0", "logging.tensorboard=false"]
    return m2dist("train", "--config", SMOKE, *base, *overrides, tmp=tmp)


def assert_no_work(tmp: Path) -> None:
    # No training started: neither the config copy nor a metric nor a checkpoint was written.
    assert not (tmp / "run" / "config.yaml").exists() and not (tmp / "run" / "metrics.jsonl").exists()
    assert not list((tmp / "ckpt").glob("step_*")) if (tmp / "ckpt").exists() else True


def test_missing_tokenizer(tmp_path, data):
    proc = train(tmp_path, data, f"data.tokenizer={tmp_path / 'nope.model'}")
    one_error_line(proc, str(tmp_path / "nope.model"), "data.tokenizer")
    assert_no_work(tmp_path)
    verify = m2dist("prep", "verify", data / "mds/pile", "--tokenizer", tmp_path / "nope.model", tmp=tmp_path)
    one_error_line(verify, str(tmp_path / "nope.model"))
    assert "shards ok" not in verify.stdout  # the tokenizer is checked before any shard is read


def test_tensor_parallel_larger_than_the_world(tmp_path, data):
    proc = train(tmp_path, data, "parallel.tensor=3")
    one_error_line(proc, "parallel.tensor=3", "world size 1")
    assert_no_work(tmp_path)


def test_truncated_shard(tmp_path, data):
    pile = tmp_path / "pile"
    shutil.copytree(data / "mds/pile", pile)
    shard = pile / "train" / "part-00001" / "shard.00000.mds"
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    proc = train(tmp_path, data, pile=pile)
    one_error_line(proc, str(shard), f"{size // 2} bytes", f"says {size}")
    assert_no_work(tmp_path)


def test_empty_dataset(tmp_path, data):
    pile = tmp_path / "pile"
    shutil.copytree(data / "mds/pile", pile)
    (pile / "train" / "index.json").write_text(json.dumps({"version": 2, "shards": []}))
    proc = train(tmp_path, data, pile=pile)
    one_error_line(proc, str(pile / "train" / "index.json"), "no samples")
    assert_no_work(tmp_path)
    verify = m2dist("prep", "verify", pile / "train", tmp=tmp_path)
    assert verify.returncode != 0 and "no samples" in verify.stderr and "Traceback" not in verify.stderr


def test_eval_of_a_missing_model(tmp_path):
    proc = m2dist("eval", tmp_path / "nope.safetensors", "--cpu", tmp=tmp_path)
    one_error_line(proc, str(tmp_path / "nope.safetensors"))


def test_zero_stage_out_of_range(tmp_path, data):
    proc = train(tmp_path, data, "deepspeed.zero_stage=7")
    one_error_line(proc, "deepspeed.zero_stage", "the command line", "0, 1, 2, 3", "got 7")
    assert_no_work(tmp_path)


# Issue 14.6: what a run needs later is checked before step 1.
def test_missing_validation_split_fails_before_training(tmp_path, data):
    pile = tmp_path / "pile"
    shutil.copytree(data / "mds/pile", pile)
    shutil.rmtree(pile / "val")
    proc = train(tmp_path, data, "trainer.eval_every=1", pile=pile)
    one_error_line(proc, str(pile / "val" / "index.json"), "data.eval_split")
    assert_no_work(tmp_path)
    # Without evaluation the same data trains (the check asks only for what the run uses).
    proc = train(tmp_path, data, "trainer.max_steps=1", "checkpoint.every=0", pile=pile)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_unwritable_checkpoint_dir(tmp_path, data):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    proc = train(tmp_path, data, f"checkpoint.dir={blocker / 'ckpt'}")
    one_error_line(proc, str(blocker / "ckpt"), "checkpoint.dir")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
