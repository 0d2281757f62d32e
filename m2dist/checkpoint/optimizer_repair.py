"""Repairs of the optimizer after DeepSpeed 0.19.8's ZeRO-3 universal load, which gets two things wrong: every
param group's hyperparameters, and the Adam step counter it shares between groups."""

from __future__ import annotations

import torch


def group_hyperparameters(engine) -> list[dict]:
    """The live optimizer's per-group hyperparameters (all but the parameters and the current LR), taken before a
    load so that :func:`restore_group_hyperparameters` can put them back."""
    return [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in engine.optimizer.param_groups]


def restore_group_hyperparameters(engine, hyper: list[dict]) -> None:
    """DeepSpeed 0.19's ZeRO-3 universal load copies param group 0's hyperparameters (weight decay, initial LR, ...)
    into every group, which would give the no-decay and filter groups the decay group's settings. They come from the
    config anyway, so put back the freshly built ones, and each group's current LR from the restored schedule."""
    groups = engine.optimizer.param_groups
    last_lr = engine.lr_scheduler.get_last_lr() if engine.lr_scheduler is not None else None
    for i, (group, saved) in enumerate(zip(groups, hyper)):
        group.update(saved)
        if last_lr is not None:
            group["lr"] = last_lr[i]


def unshare_step_counters(engine) -> None:
    """DeepSpeed 0.19.8's ZeRO-3 universal load (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``) stores one
    and the same ``step`` tensor in the state of every sub-group. torch's AdamW increments ``state['step']`` in place
    once per group, so with G param groups (m2dist has 3: decay, no_decay, filter) the shared counter advanced G
    times per optimizer step: from the first step after the resume Adam's bias correction used the wrong step, and
    the losses drifted ~1e-4 relative from an uninterrupted run. Give each state its own counter again (a native
    load and ZeRO-1/2's universal load already do)."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    seen = set()
    for state in base.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(state["step"]))
