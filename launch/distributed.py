"""Initialise ``torch.distributed`` the same way under every launcher m2dist supports.

The launchers disagree on how they describe a process:

* ``torchrun`` and the ``deepspeed`` launcher export ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``
  (the deepspeed launcher also ``LOCAL_SIZE``/``CROSS_RANK``);
* ``srun`` with one task per process exports only ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``/node list;
* a bare ``python`` exports nothing, and DeepSpeed would then go looking for MPI (``mpi4py`` is not installed,
  stack-facts §2).

So we translate whatever we find into the torchrun variables (which DeepSpeed, torch and mosaicml-streaming all
read, streaming in particular needs ``LOCAL_WORLD_SIZE`` under srun) and then initialise once through
``deepspeed.init_distributed`` so that ``deepspeed.comm`` is set up for the engine.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass

from m2dist.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "torchrun" | "deepspeed" | "srun" | "single"
    backend: str  # "gloo" | "nccl"
    device: str  # "cpu" | "cuda:<local_rank>"


def detect_launcher(env=None) -> str:
    env = os.environ if env is None else env
    # torchrun inside an srun allocation (one task per node) also has SLURM_* set: torchrun wins.
    if "TORCHELASTIC_RUN_ID" in env or "TORCHELASTIC_RESTART_COUNT" in env:
        return "torchrun"
    if "RANK" in env and "WORLD_SIZE" in env:
        # The deepspeed launcher exports LOCAL_SIZE / CROSS_RANK; anything else that sets RANK is treated alike.
        return "deepspeed" if ("LOCAL_SIZE" in env or "CROSS_RANK" in env) else "torchrun"
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "srun"
    return "single"


def _first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list without calling scontrol: ``gpu[003-005,7],cpu1`` -> ``gpu003``."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return "127.0.0.1"
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def normalize_env(env=None) -> str:
    """Fill in the torchrun-style variables for the detected launcher; returns the launcher name."""
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher == "srun":
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        # SLURM_NTASKS_PER_NODE may read "4(x2)"; the per-node count is what precedes the parenthesis.
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        env.setdefault("LOCAL_WORLD_SIZE", per_node or env["WORLD_SIZE"])
        env.setdefault("MASTER_ADDR", _first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))))
        # Derive the port from the job id so every task agrees on it without talking.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    elif launcher == "single":
        env["RANK"] = "0"
        env["WORLD_SIZE"] = "1"
        env["LOCAL_RANK"] = "0"
        env.setdefault("LOCAL_WORLD_SIZE", "1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    else:
        env.setdefault("LOCAL_RANK", "0")
        if env["WORLD_SIZE"] == "1":  # RANK=0 WORLD_SIZE=1 by hand: nobody to meet, any local port will do
            env.setdefault("MASTER_ADDR", "127.0.0.1")
            env.setdefault("MASTER_PORT", str(_free_port()))
        env.setdefault("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE", env["WORLD_SIZE"]))
    return launcher


def disable_deepspeed_shm_op() -> None:
    """DeepSpeed JIT-builds a shared-memory all-reduce op in init_distributed (~90 s, leaks /dev/shm under its
    launcher); it only serves inference all-reduce, so training never needs it (stack-facts §1)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Initialise the default process group (gloo on CPU, nccl on GPU) and return who we are.

    Idempotent: a second call returns the same description.
    """
    import torch

    launcher = normalize_env()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        backend, dev = "nccl", f"cuda:{local_rank}"
    else:
        # Must be set before deepspeed is first imported: otherwise it probes for accelerators.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        backend, dev = "gloo", "cpu"

    import torch.distributed as dist

    if not dist.is_initialized():
        import deepspeed

        disable_deepspeed_shm_op()
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            rank=rank,
            world_size=world,
        )
    info = DistInfo(rank, world, local_rank, local_world, launcher, backend, dev)
    log.debug("distributed: %s", info)
    return info


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
