"""Read what a run directory records: metrics (the trainer), attempts and job ids (train.sbatch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def read_jsonl(path: Path) -> list[dict]:
    """JSON objects of a .jsonl file; a torn last line (the writer was killed) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def train_metrics(run_dir: Path) -> list[dict]:
    """Training-step records of ``metrics.jsonl``, one per step, the newest attempt's value winning.

    A resumed run appends again from its checkpoint, so steps after the last checkpoint appear twice;
    evaluation records (no ``loss``/``tokens_per_s``) are left out.
    """
    by_step: dict[int, dict] = {}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        if "step" in rec and "tokens_per_s" in rec:
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def job_ids(run_dir: Path) -> list[str]:
    ids: list[str] = []
    path = run_dir / "slurm" / "jobs"
    if path.is_file():
        for line in path.read_text().split():
            if line not in ids:
                ids.append(line)
    return ids


def attempts(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "slurm" / "attempts.jsonl")


def world_size(run_dir: Path) -> Optional[int]:
    """Processes (GPUs, or CPU ranks) of the newest attempt that started."""
    starts = [a for a in attempts(run_dir) if a.get("event") == "start"]
    return int(starts[-1]["world_size"]) if starts else None

