"""Learning-rate schedule: linear warm-up, then linear or cosine decay to a floor, as a multiplier.

It is a multiplier (``LambdaLR``) rather than absolute values so that every param group keeps its own base
rate (the implicit-filter group may train at ``optimizer.filter_lr``). DeepSpeed steps it once per optimizer step
and saves it in the checkpoint.
"""

from __future__ import annotations

import math

from m2dist.config.schema import ScheduleConfig


def lr_multiplier(step: int, schedule: ScheduleConfig, max_steps: int) -> float:
    """Multiplier of the base LR for optimizer step ``step`` (0-based: the first update uses step 0)."""
    warmup = schedule.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    floor = schedule.min_lr_ratio
    if schedule.decay == "constant":
        return 1.0
    span = max(1, max_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    if schedule.decay == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, schedule: ScheduleConfig, max_steps: int):
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda step: lr_multiplier(step, schedule, max_steps))
