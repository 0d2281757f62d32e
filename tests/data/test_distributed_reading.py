"""Two real torch.distributed ranks: disjoint shards of the epoch, exact resume, TP replication, elasticity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2dist.config import DataConfig
from m2dist.data import build_dataloader

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_disjoint_cover_resume_replicate_and_rescale(prepared, tmp_path, free_port):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port}",
           str(Path(__file__).with_name("two_rank_reader.py")), prepared["lm"], prepared["tokenizer"], str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # Disjoint, and together the whole split (streaming repeats a few samples to even out shares).
    ids0 = [i for b in r0["full"] for i in b]
    ids1 = [i for b in r1["full"] for i in b]
    index = json.loads((Path(prepared["lm"]) / "val" / "index.json").read_text())
    num_samples = sum(s["samples"] for s in index["shards"])
    assert len(ids0) == len(ids1)
    assert set(ids0) | set(ids1) == set(range(num_samples))
    assert len(ids0) + len(ids1) - num_samples < r0["state"]["num_canonical_nodes"] + 2
    assert len(set(ids0) & set(ids1)) <= len(ids0) + len(ids1) - num_samples

    # Each rank resumed from the mid-epoch state continues its exact order.
    for r in (r0, r1):
        assert r["head"] + r["tail"] == r["full"]
    assert r0["state"] == r1["state"] and r0["state"]["sample_in_epoch"] == 5 * 4 * 2

    # Tensor-parallel pair (TP=2): both ranks read the same batches, = the one-data-parallel-rank order.
    cfg = DataConfig(path=prepared["lm"], tokenizer=prepared["tokenizer"])
    single = build_dataloader(cfg, split="val", train=True, micro_batch_size=4, seq_len=64)
    first5 = [b["sample_ids"].tolist() for _, b in zip(range(5), single)]
    assert r0["tp"] == r1["tp"] == first5

    # Elastic: one rank with the same global batch (8) sees, step by step, the union of the two ranks'
    # batches; and it resumes the two-rank state without repeating or skipping a sample.
    one = [b["sample_ids"].tolist()
           for b in build_dataloader(cfg, split="val", train=True, micro_batch_size=8, seq_len=64)]
    two = [sorted(a + b) for a, b in zip(r0["full"], r1["full"])]
    assert [sorted(b) for b in one] == two
    rescaled = build_dataloader(cfg, split="val", train=True, micro_batch_size=8, seq_len=64)
    rescaled.load_state_dict(r0["state"])
    assert [sorted(b["sample_ids"].tolist()) for b in rescaled] == two[5:]
