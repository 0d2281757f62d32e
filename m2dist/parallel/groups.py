"""Tensor x data process groups.

With ``parallel.tensor > 1`` the groups come from megatron-core's ``parallel_state`` (TP innermost, so a TP group
stays inside a node), because the tensor-parallel layers and vocab-parallel loss read them from there. With TP=1
there is nothing for megatron to do and importing it costs ~6 s per process (stack-facts §3), so the data-parallel
group is simply the world.

:class:`ParallelGroups` doubles as DeepSpeed's ``mpu`` so that ZeRO partitions over the data-parallel group only and
checkpoint files are named per tensor rank (``mp_rank_XX``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch.distributed as dist

_CPU_PATCHED = False


def apply_megatron_cpu_patch() -> None:
    """Let megatron-core's tensor-parallel code run on CPU (gloo) -- the documented workaround of stack-facts §3.

    megatron-core allocates collective outputs with ``device=torch.cuda.current_device()`` and keeps its
    model-parallel RNG streams as CUDA generator states. On a CPU-only process we (1) point ``current_device`` at
    the CPU and (2) keep the RNG-tracker states as CPU generator states. Only applied when no GPU is present; on a
    GPU nothing is changed.
    """
    global _CPU_PATCHED
    import torch

    if _CPU_PATCHED or torch.cuda.is_available():
        return
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.current_device = lambda: torch.device("cpu")
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)

    def add(self, name, seed):
        # Same bookkeeping as CudaRNGStatesTracker.add, but the stream is a seeded CPU generator state.
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"cuda rng state {name} already exists")
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    mrandom.CudaRNGStatesTracker.add = add
    _CPU_PATCHED = True


@dataclass
class ParallelGroups:
    tensor_size: int
    data_size: int
    tensor_rank: int
    data_rank: int
    tensor_group: Optional[Any]
    data_group: Optional[Any]
    uses_megatron: bool

    # --- DeepSpeed's mpu interface -------------------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.tensor_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tensor_size

    def get_model_parallel_group(self):
        return self.tensor_group

    def get_data_parallel_rank(self) -> int:
        return self.data_rank

    def get_data_parallel_world_size(self) -> int:
        return self.data_size

    def get_data_parallel_group(self):
        return self.data_group

    # DeepSpeed also asks for these names in some code paths (pipeline-parallel sizes are always 1 here).
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0


def init_groups(tensor_size: int = 1, seed: Optional[int] = None) -> ParallelGroups:
    """Build the tensor x data groups of the initialised default process group."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if world % tensor_size:
        raise ValueError(f"parallel.tensor={tensor_size} does not divide the world size {world}")
    if tensor_size == 1:
        group = dist.group.WORLD if dist.is_initialized() else None
        return ParallelGroups(1, world, 0, rank, None, group, uses_megatron=False)

    apply_megatron_cpu_patch()
    from megatron.core import parallel_state, tensor_parallel

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_size)
    if seed is not None:
        # Named RNG streams: the same on a TP group's ranks for replicated params, different for sharded ones.
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return ParallelGroups(
        tensor_size=tensor_size,
        data_size=parallel_state.get_data_parallel_world_size(),
        tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
        data_rank=parallel_state.get_data_parallel_rank(),
        tensor_group=parallel_state.get_tensor_model_parallel_group(),
        data_group=parallel_state.get_data_parallel_group(),
        uses_megatron=True,
    )


def destroy_groups() -> None:
    import sys

    if "megatron.core" in sys.modules:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
