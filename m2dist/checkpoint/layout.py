"""The parallel layout a checkpoint was saved at, and the plan for loading it at the layout of this job: natively,
through DeepSpeed's universal form, or by cutting ZeRO-0 files for another tensor-parallel size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from m2dist.checkpoint.files import read_trainer_state


@dataclass
class Layout:
    world_size: int
    data_parallel: int  # DeepSpeed's data-parallel size, DP x CP: the ranks ZeRO partitions over
    tensor_parallel: int
    zero_stage: int
    global_batch_size: int
    micro_batch_size: int
    context_parallel: int = 1  # checkpoints saved before context parallelism have no entry: 1


@dataclass
class LoadPlan:
    path: str
    trainer_state: dict
    # How the model/optimizer are read: "native" (same layout, or ZeRO-0 at another data-parallel size: its optimizer
    # is not partitioned), "universal" (DeepSpeed's per-parameter conversion: another data-/tensor-parallel size or
    # ZeRO stage, ZeRO >= 1 on both sides) or "zero0_tp" (ZeRO-0 at another tensor-parallel size: the model and
    # optimizer files are merged over the tensor ranks and cut again, see reshard_zero0).
    mode: str
    reasons: list = field(default_factory=list)


def plan_load(path: str, now: Layout) -> LoadPlan:
    """How checkpoint ``path`` is loaded at layout ``now``; RuntimeError (one line) if it cannot be."""
    state = read_trainer_state(path)
    saved = Layout(**state["layout"])
    reasons = []
    if saved.global_batch_size != now.global_batch_size:
        # The data order is defined per global batch: changing it would repeat or skip samples.
        raise RuntimeError(
            f"{path} was trained with trainer.global_batch_size={saved.global_batch_size}; resuming needs the "
            f"same global batch (now {now.global_batch_size})"
        )
    if saved.tensor_parallel != now.tensor_parallel:
        reasons.append(f"tensor parallel {saved.tensor_parallel} -> {now.tensor_parallel}")
    if saved.context_parallel != now.context_parallel:
        # Parameters are replicated over CP: only the per-rank state (data position, RNG) is re-derived.
        reasons.append(f"context parallel {saved.context_parallel} -> {now.context_parallel}")
    if saved.data_parallel != now.data_parallel:
        reasons.append(f"data parallel {saved.data_parallel} -> {now.data_parallel}")
    if saved.zero_stage != now.zero_stage:
        reasons.append(f"ZeRO stage {saved.zero_stage} -> {now.zero_stage}")
    if not reasons:
        return LoadPlan(path, state, "native")
    if saved.zero_stage == 0 and now.zero_stage == 0:
        if saved.tensor_parallel == now.tensor_parallel:
            # ZeRO-0 keeps the whole optimizer state in the per-tensor-rank model file: any data-parallel size
            # reads it.
            return LoadPlan(path, state, "native", reasons)
        return LoadPlan(path, state, "zero0_tp", reasons)
    if saved.zero_stage == 0 or now.zero_stage == 0:
        raise RuntimeError(
            f"cannot reshard {path} ({', '.join(reasons)}): a change between ZeRO-0 and ZeRO >= 1 is not "
            f"supported (layout changes are, at any one stage); resume with "
            f"deepspeed.zero_stage={saved.zero_stage}"
        )
    return LoadPlan(path, state, "universal", reasons)


def parameter_layout(model: torch.nn.Module) -> dict:
    """Per-parameter shard description: local shape and, for tensor-parallel parameters, the partition dimension
    (megatron-core's ``tensor_model_parallel``/``partition_dim``/``partition_stride`` attributes). With it a
    checkpoint says how to rebuild each global tensor from the tensor ranks' files."""
    out = {}
    for name, p in model.named_parameters():
        entry: dict[str, Any] = {"shape": list(getattr(p, "ds_shape", p.shape))}
        if getattr(p, "tensor_model_parallel", False):
            entry["partition_dim"] = int(getattr(p, "partition_dim", 0))
            entry["partition_stride"] = int(getattr(p, "partition_stride", 1))
        out[name] = entry
    return out
