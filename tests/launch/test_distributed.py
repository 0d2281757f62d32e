"""launch.distributed: each launcher's environment is recognised and translated; srun-style ranks really meet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.distributed import _first_slurm_host, detect_launcher, normalize_env

REPO = Path(__file__).resolve().parents[2]


def test_detects_each_launcher():
    assert detect_launcher({}) == "single"
    assert detect_launcher({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2"}) == "torchrun"
    assert detect_launcher({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_SIZE": "2", "CROSS_RANK": "0"}) == "deepspeed"
    assert detect_launcher({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == "srun"
    # torchrun started inside an allocation (one srun task per node) is torchrun, not srun.
    assert detect_launcher({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "TORCHELASTIC_RUN_ID": "x",
                            "RANK": "5", "WORLD_SIZE": "16"}) == "torchrun"
    # A one-task srun step is just a single process.
    assert detect_launcher({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == "single"


def test_srun_env_becomes_torchrun_env():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)",
           "SLURM_JOB_NODELIST": "gpu[003-004]", "SLURM_JOB_ID": "12345"}
    assert normalize_env(env) == "srun"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("5", "8", "1", "4")
    assert env["MASTER_ADDR"] == "gpu003" and env["MASTER_PORT"] == str(20000 + 12345 % 20000)


def test_single_process_gets_a_world_of_one():
    env = {}
    assert normalize_env(env) == "single"
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and env["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(env["MASTER_PORT"]) < 65536


@pytest.mark.parametrize("nodelist,first", [("node1", "node1"), ("gpu[07-09,12],cpu1", "gpu07"),
                                            ("a-b[1,3]", "a-b1")])
def test_first_slurm_host(nodelist, first):
    assert _first_slurm_host(nodelist) == first


SCRIPT = """
import torch, torch.distributed as dist
from launch.distributed import destroy_distributed, init_distributed
info = init_distributed()
t = torch.tensor([info.rank + 1.0])
dist.all_reduce(t)
print(info.launcher, info.rank, info.world_size, info.backend, float(t), flush=True)
# Without a teardown gloo's threads can outlive the interpreter and abort it at exit (seen once in CI).
destroy_distributed()
"""


@pytest.mark.slow
def test_srun_style_ranks_initialise_and_all_reduce(free_port):
    """Two processes with only Slurm's variables (as `srun -n 2` gives them) form one gloo world."""
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_NTASKS_PER_NODE="2",
                   SLURM_JOB_NODELIST="127.0.0.1", MASTER_PORT=str(free_port), DS_ACCELERATOR="cpu",
                   PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    lines = sorted(o.strip().splitlines()[-1] for o, _ in outs)
    assert lines == ["srun 0 2 gloo 3.0", "srun 1 2 gloo 3.0"]
