"""The DeepSpeed config: generated from the m2dist config, or the user's ``deepspeed.config_file`` checked
against it."""

from __future__ import annotations

import json

from m2dist.config.schema import Config
from m2dist.train.precision import ds_precision_section


def gradient_accumulation_steps(cfg: Config, data_parallel_size: int) -> int:
    t = cfg.trainer
    per_step = t.micro_batch_size * data_parallel_size
    if t.global_batch_size % per_step:
        raise ValueError(
            f"trainer.global_batch_size={t.global_batch_size} is not a multiple of "
            f"trainer.micro_batch_size={t.micro_batch_size} x data-parallel size {data_parallel_size}"
        )
    return t.global_batch_size // per_step


# Elements per reduction bucket when gradients are reduced during the backward: Megatron's 40M (its default bucket for
# overlapped reduction); DeepSpeed's own 5e8 holds a whole 360M-parameter model, so nothing would overlap, and with
# overlap_comm DeepSpeed keeps two buckets.
OVERLAP_BUCKET_ELEMENTS = 40_000_000


def zero_section(cfg: Config) -> dict:
    stage = cfg.deepspeed.zero_stage
    zero = {"stage": stage}
    if cfg.deepspeed.overlap_comm and stage in (1, 2):
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=OVERLAP_BUCKET_ELEMENTS)
    elif stage == 3 and not cfg.deepspeed.overlap_comm:
        zero["overlap_comm"] = False  # DeepSpeed overlaps ZeRO-3 unless told not to
    return zero


def build_ds_config(cfg: Config, data_parallel_size: int, device: str, load_universal: bool = False) -> dict:
    """The ds_config, generated from the m2dist config, or the user's ``deepspeed.config_file`` checked against it.

    ``data_parallel_size`` is the loader's (pure DP). DeepSpeed's data-parallel group is DP x CP (every rank holding
    the same parameters), and it checks train_batch_size = micro x accumulation x its group size: with context
    parallelism each of its "samples" is a sample's slice, so its batch is the global batch x CP."""
    gas = gradient_accumulation_steps(cfg, data_parallel_size)
    batch = {
        "train_batch_size": cfg.trainer.global_batch_size * cfg.parallel.context,
        "train_micro_batch_size_per_gpu": cfg.trainer.micro_batch_size,
        "gradient_accumulation_steps": gas,
    }
    if cfg.deepspeed.config_file:
        with open(cfg.deepspeed.config_file) as f:
            ds = json.load(f)
        for key, value in batch.items():
            given = ds.get(key, "auto")
            if given == "auto":
                ds[key] = value
            elif int(given) != value:
                raise ValueError(
                    f"{cfg.deepspeed.config_file}: {key}={given} disagrees with the m2dist config ({value}); "
                    f"batch sizes come from trainer.global_batch_size / micro_batch_size"
                )
        if "optimizer" in ds or "scheduler" in ds:
            # m2dist passes its own AdamW (param groups, no JIT-built ops) and LR schedule.
            raise ValueError(f"{cfg.deepspeed.config_file}: remove 'optimizer'/'scheduler'; m2dist configures them")
    else:
        ds = dict(batch)
        ds["gradient_clipping"] = cfg.trainer.grad_clip
        ds["zero_optimization"] = zero_section(cfg)
        ds.update(ds_precision_section(cfg, device))
        # m2dist logs its own metrics; DeepSpeed's per-step prints would interleave with them.
        ds["steps_per_print"] = 1 << 30
        ds["wall_clock_breakdown"] = False
    if load_universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds
