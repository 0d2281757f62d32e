"""Metrics: one JSON object per logged step in ``<run_dir>/metrics.jsonl``, the same scalars in TensorBoard, and a
console line with ETA. Only global rank 0 writes; callers pass values that are already reduced over ranks."""

from __future__ import annotations

import datetime
import json
import math
import os
import resource
import time
from typing import Optional

import torch

from m2dist.utils.logging import get_logger

log = get_logger(__name__)

# Dense bf16 peak FLOP/s per device (not the 2x "sparse" figure, a frequent MFU mistake: anchors survey §C.9).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "B200": 2250e12,
}


def device_peak_flops(device: str) -> Optional[float]:
    """Peak dense bf16 FLOP/s of this process's device; None on CPU or an unknown GPU (then MFU is null)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


def memory_gib(device: str) -> float:
    """Peak memory of this process: allocated device memory on GPU, resident set size on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def drop_records_after(path: str, step: int) -> int:
    """Rewrite the JSON-lines file ``path`` without the records whose ``step`` is greater than ``step`` (and
    without a torn last line); atomic (a rename). Returns how many records were dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a kill
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.writelines(kept)
        os.replace(tmp, path)
    return dropped


class MetricsLogger:
    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, max_steps: int):
        self.enabled = enabled
        self.max_steps = max_steps
        self.writer = None
        self._file = None
        self._t0: Optional[float] = None
        self._step0 = 0
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        # Append: a resumed run continues the same file; start() first drops what the resumed run will redo.
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(run_dir, "tb"))

    def start(self, step: int) -> None:
        """The loop starts after ``step`` (0: a fresh run). Records of later steps, written by a run that went on
        past the checkpoint this one resumed from (killed, or restarted from an older checkpoint, or a re-run from
        scratch), are dropped: each step appears once, for the run that counts."""
        self._t0, self._step0 = time.perf_counter(), step
        if self._file is not None:
            self._file.close()
            drop_records_after(self.path, step)
            self._file = open(self.path, "a", buffering=1)

    def eta(self, step: int) -> str:
        if self._t0 is None or step <= self._step0:
            return "?"
        per_step = (time.perf_counter() - self._t0) / (step - self._step0)
        return str(datetime.timedelta(seconds=int(per_step * (self.max_steps - step))))

    def log(self, record: dict, console: bool = True) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        step = record["step"]
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
        if console:
            log.info(self.format(record))

    def format(self, r: dict) -> str:
        if "eval_loss" in r:
            extra = " | ".join(f"{k[5:]} {v:.4f}" for k, v in r.items() if k.startswith("eval_") and v is not None)
            return f"eval step {r['step']} | {extra}"
        mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        gn = "n/a" if r.get("grad_norm") is None else f"{r['grad_norm']:.3f}"
        return (
            f"step {r['step']}/{self.max_steps} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | gnorm {gn} | "
            f"{r['tokens_per_s']:,.0f} tok/s | mfu {mfu} | mem {r['mem_gib']:.2f} GiB | eta {self.eta(r['step'])}"
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.writer is not None:
            self.writer.close()
