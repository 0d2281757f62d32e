"""DeepSpeed ZeRO-1/2's gradient norm with one multi-tensor kernel instead of two kernels per parameter, its clip
without a host sync per parameter group, and its skip on an invalid norm without a host sync per step.

Why: ``DeepSpeedZeroOptimizer.get_grad_norm_direct`` (deepspeed 0.19) converts each gradient to fp64 and takes its
norm one parameter at a time, so a step launches two small kernels per parameter tensor. M2's layers have ~22 tensors
each (filter MLPs, short conv, norms): M2-GPT-360M has ~900, and the trace of its trainer step shows the GPU idle
for ~60 ms of the optimizer step while the host issues them (benchmarks/NOTES.md, attempt 19). ``torch._foreach_norm``
takes every tensor's norm in one launch (a few, for many tensors), in the same fp64, and the rest -- which tensors
count under tensor parallelism, the all-reduces over the data and model-parallel groups, the root, the NaN mask -- is
DeepSpeed's code unchanged. Any case this does not cover (another norm type, pipeline-replicated parameters) runs
DeepSpeed's own method.

The clip: ``unscale_and_clip_grads`` asks ``is_invalid_grad_norm(norm)`` -- a ``bool`` of a device tensor, so a host
sync -- once per parameter group (three in our models), after ``step`` has already asked it once and skipped the
step on an invalid norm. Each sync drains the GPU's queue, and the GPU then waits while the host issues the next
small launches: the profile of the M2-GPT-360M trainer step at L=2048 shows 12 ms of GPU idle time in the optimizer
step and 15 ms right after it (benchmarks/NOTES.md, attempt 22). ``device_side_clip`` makes the same replacement of
an invalid norm by infinity with ``torch.where`` on the device: the same scale, with no sync.

The skip: ``step`` itself asks ``is_invalid_grad_norm`` once more and, on an invalid norm, skips the update. That
last sync drains the GPU's queue every step, and the host then issues the rest of the step and the next forward
while the GPU waits. ``device_side_skip_step`` runs DeepSpeed's ``step`` with that check answered "valid" on the
host and the real answer handed to the optimizer as ``found_inf``, the flag through which torch's fused AdamW skips
an update on the device (the mechanism of ``torch.amp.GradScaler``): parameters, moments and the step count stay as
they were, and the reported norm is infinity, as after DeepSpeed's skip. One difference: the host cannot know, so
DeepSpeed's engine counts the step as applied and advances the LR schedule. Without loss scaling (bf16 or fp32
gradients) an invalid norm means a diverged run, not the routine overflow of fp16, which keeps DeepSpeed's step.
"""

from __future__ import annotations

import torch

_ORIGINAL: dict = {}  # DeepSpeed's methods, once replaced (the fallbacks of the cases not covered)


def foreach_grad_norm_direct(self, gradients, params, norm_type=2):
    from deepspeed import comm as dist
    from deepspeed.runtime.constants import PIPE_REPLICATED
    from deepspeed.runtime.utils import is_model_parallel_parameter, mask_nan_or_inf_with_val_inplace
    from deepspeed.runtime.zero.utils import get_norm_dtype

    if float(norm_type) != 2.0 or any(hasattr(p, PIPE_REPLICATED) and p.ds_pipe_replicated for p in params):
        return _ORIGINAL["get_grad_norm_direct"](self, gradients, params, norm_type)
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


def device_side_clip(self, grad_groups_flat, total_norm):
    """DeepSpeed 0.19's ``unscale_and_clip_grads`` with its validity check on the device."""
    if self.clip_grad == 0.0 and self.loss_scale == 1.0:
        return
    combined_scale = self.loss_scale
    if self.clip_grad > 0.:
        norm = torch.as_tensor(total_norm, dtype=torch.float, device=self.device)
        # An invalid norm (non-finite, or the -1 sentinel of DeepSpeed's group-norm helpers) clips by infinity.
        norm = torch.where(torch.isfinite(norm) & (norm >= 0), norm, float("inf"))
        clip = torch.clamp(((norm / self.loss_scale) + 1e-6) / self.clip_grad, min=1.0)
        combined_scale = clip * self.loss_scale
    for grad in grad_groups_flat:
        for g in (grad if isinstance(grad, list) else [grad]):
            g.data.mul_(1. / combined_scale)


def _skips_on_the_device(self) -> bool:
    """Whether the wrapped optimizer can skip an update on the device (torch's fused Adam/AdamW: it takes
    ``found_inf``), and DeepSpeed's step would decide the skip from the norm alone (no fp16 loss scaling, no
    overflow check of its own, no CPU offload)."""
    return (getattr(self.optimizer, "_step_supports_amp_scaling", False) and self.dtype != torch.float16
            and not self.check_grad_overflow and not self.cpu_offload)


def device_side_skip_step(self, closure=None):
    """DeepSpeed 0.19's ``DeepSpeedZeroOptimizer.step`` with its skip on an invalid norm taken on the device."""
    original = _ORIGINAL["step"]
    if not _skips_on_the_device(self):
        return original(self, closure)
    from deepspeed.runtime.zero import stage_1_and_2

    host_check = stage_1_and_2.is_invalid_grad_norm
    found = []

    def flag_on_the_device(norm):
        if not torch.is_tensor(norm):
            return host_check(norm)  # a Python number: no sync to avoid
        found.append((~torch.isfinite(norm) | (norm < 0)).any().float())
        self.optimizer.found_inf = found[-1]  # read by the fused AdamW kernel: no update where it is 1
        return False

    stage_1_and_2.is_invalid_grad_norm = flag_on_the_device
    try:
        original(self, closure)
    finally:
        stage_1_and_2.is_invalid_grad_norm = host_check
        if hasattr(self.optimizer, "found_inf"):
            del self.optimizer.found_inf
    if found and torch.is_tensor(self._global_grad_norm):
        self._global_grad_norm = torch.where(found[-1] > 0, float("inf"), self._global_grad_norm)


def install_zero_grad_norm() -> None:
    """Installs ``foreach_grad_norm_direct``, ``device_side_clip`` and ``device_side_skip_step`` on DeepSpeed's
    ZeRO-1/2 optimizer class (once per process)."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not _ORIGINAL:
        for name in ("get_grad_norm_direct", "step"):
            _ORIGINAL[name] = getattr(DeepSpeedZeroOptimizer, name)
        DeepSpeedZeroOptimizer.get_grad_norm_direct = foreach_grad_norm_direct
        DeepSpeedZeroOptimizer.unscale_and_clip_grads = device_side_clip
        DeepSpeedZeroOptimizer.step = device_side_skip_step
