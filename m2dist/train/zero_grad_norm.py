"""DeepSpeed ZeRO-1/2's gradient norm with one multi-tensor kernel instead of two kernels per parameter.

Why: ``DeepSpeedZeroOptimizer.get_grad_norm_direct`` (deepspeed 0.19) converts each gradient to fp64 and takes its
norm one parameter at a time, so a step launches two small kernels per parameter tensor. M2's layers have ~22 tensors
each (filter MLPs, short conv, norms): M2-GPT-360M has ~900, and the trace of its trainer step shows the GPU idle
for ~60 ms of the optimizer step while the host issues them (benchmarks/NOTES.md, attempt 19). ``torch._foreach_norm``
takes every tensor's norm in one launch (a few, for many tensors), in the same fp64, and the rest -- which tensors
count under tensor parallelism, the all-reduces over the data and model-parallel groups, the root, the NaN mask -- is
DeepSpeed's code unchanged. Any case this does not cover (another norm type, pipeline-replicated parameters) runs
DeepSpeed's own method.
"""

from __future__ import annotations

import torch

_ORIGINAL: list = []  # DeepSpeed's method, once installed


def foreach_grad_norm_direct(self, gradients, params, norm_type=2):
    from deepspeed import comm as dist
    from deepspeed.runtime.constants import PIPE_REPLICATED
    from deepspeed.runtime.utils import is_model_parallel_parameter, mask_nan_or_inf_with_val_inplace
    from deepspeed.runtime.zero.utils import get_norm_dtype

    if float(norm_type) != 2.0 or any(hasattr(p, PIPE_REPLICATED) and p.ds_pipe_replicated for p in params):
        return _ORIGINAL[0](self, gradients, params, norm_type)
    grads = [g.detach() for g, p in zip((g for g in gradients if not getattr(g, "_zero_padding", False)), params)
             if is_model_parallel_parameter(p) or self.model_parallel_rank == 0]
    if grads:
        norms = torch._foreach_norm(grads, 2.0, dtype=get_norm_dtype())
        total_norm = torch.stack(norms).pow(2).sum().float()
    else:
        total_norm = torch.tensor(0.0, dtype=torch.float32).to(self.device)
    dist.all_reduce(total_norm, op=dist.ReduceOp.SUM, group=self.dp_process_group)
    self._model_parallel_all_reduce(tensor=total_norm, op=dist.ReduceOp.SUM)
    total_norm = total_norm.pow(0.5)
    mask_nan_or_inf_with_val_inplace(total_norm, device=self.device)
    return total_norm


def use_foreach_grad_norm() -> None:
    """Installs ``foreach_grad_norm_direct`` on DeepSpeed's ZeRO-1/2 optimizer class (once per process)."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not _ORIGINAL:
        _ORIGINAL.append(DeepSpeedZeroOptimizer.get_grad_norm_direct)
        DeepSpeedZeroOptimizer.get_grad_norm_direct = foreach_grad_norm_direct
