"""Tensor x context x data process groups.

With ``parallel.tensor > 1`` or ``parallel.context > 1`` the groups come from megatron-core's ``parallel_state``
(``initialize_model_parallel(tensor_model_parallel_size=TP, context_parallel_size=CP)``, its default order
``tp-cp-ep-dp-pp``: TP innermost, so a TP group stays inside a node, then CP, then DP; global rank
``g = tp_rank + TP * (cp_rank + CP * dp_rank)``), because the tensor-parallel layers, the vocab-parallel loss and the
context-parallel mixer read them from there. With TP = CP = 1 there is nothing for megatron to do and importing it
costs ~6 s per process (stack-facts §3), so the data-parallel group is simply the world.

Two data-parallel views: ``data_*`` is pure DP (the ranks that read different samples: the loader, the sample
log), ``data_context_*`` is DP x CP (the ranks that hold the same parameters and must sum their gradients: megatron's
``get_data_parallel_group(with_context_parallel=True)``). :class:`ParallelGroups` doubles as DeepSpeed's ``mpu``
with the DP x CP view, so that gradients are reduced and ZeRO partitions over it, and checkpoint files are named per
tensor rank (``mp_rank_XX``).
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
    context_size: int = 1
    context_rank: int = 0
    context_group: Optional[Any] = None
    # DP x CP (the gradient-reduction group); None with CP = 1: then it is the data-parallel group.
    data_context_group_: Optional[Any] = None

    @property
    def data_context_size(self) -> int:
        return self.data_size * self.context_size

    @property
    def data_context_rank(self) -> int:
        return self.data_rank * self.context_size + self.context_rank  # megatron's rank in the DP x CP group

    @property
    def data_context_group(self):
        return self.data_group if self.context_size == 1 else self.data_context_group_

    # --- DeepSpeed's mpu interface -------------------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.tensor_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tensor_size

    def get_model_parallel_group(self):
        return self.tensor_group

    # DeepSpeed's "data parallel" is every rank holding the same parameters: DP x CP.
    def get_data_parallel_rank(self) -> int:
        return self.data_context_rank

    def get_data_parallel_world_size(self) -> int:
        return self.data_context_size

    def get_data_parallel_group(self):
        return self.data_context_group

    # DeepSpeed also asks for these names in some code paths (pipeline-parallel sizes are always 1 here).
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0


def init_groups(tensor_size: int = 1, seed: Optional[int] = None, context_size: int = 1) -> ParallelGroups:
    """Build the tensor x context x data groups of the initialised default process group."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if world % (tensor_size * context_size):
        raise ValueError(f"parallel.tensor={tensor_size} x parallel.context={context_size} does not divide the "
                         f"world size {world}")
    if tensor_size == 1 and context_size == 1:
        group = dist.group.WORLD if dist.is_initialized() else None
        return ParallelGroups(1, world, 0, rank, None, group, uses_megatron=False)

    apply_megatron_cpu_patch()
    from megatron.core import parallel_state, tensor_parallel

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_size,
                                                 context_parallel_size=context_size)
    if seed is not None:
        # Named RNG streams: the same on a TP group's ranks for replicated params, different for sharded ones.
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    groups = ParallelGroups(
        tensor_size=tensor_size,
        data_size=parallel_state.get_data_parallel_world_size(),
        tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
        data_rank=parallel_state.get_data_parallel_rank(),
        tensor_group=parallel_state.get_tensor_model_parallel_group(),
        data_group=parallel_state.get_data_parallel_group(),
        uses_megatron=True,
        context_size=context_size,
        context_rank=parallel_state.get_context_parallel_rank(),
        context_group=parallel_state.get_context_parallel_group(),
        data_context_group_=parallel_state.get_data_parallel_group(with_context_parallel=True),
    )
    # The documented rank order (docs/context_parallel.md), which the loader's replication relies on.
    assert rank == groups.tensor_rank + tensor_size * groups.data_context_rank, (rank, groups)
    assert groups.data_context_rank == parallel_state.get_data_parallel_rank(with_context_parallel=True)
    return groups


def destroy_groups() -> None:
    import sys

    if "megatron.core" in sys.modules:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
