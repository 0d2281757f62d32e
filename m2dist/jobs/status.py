"""``m2dist slurm status RUN``: a run's Slurm job state, its attempts and its latest metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from m2dist.jobs import records

TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE"}


def job_info(job_id: str) -> Optional[dict]:
    """``scontrol show job`` as a dict (JobState, Restarts, NodeList, ...); None once Slurm forgot the job
    (after MinJobAge) or when Slurm cannot be reached."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or "JobId=" not in proc.stdout:
        return None
    info = {}
    for token in proc.stdout.split():
        key, sep, value = token.partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def metrics_line(rec: dict) -> str:
    return (f"step {rec.get('step')}  loss {_fmt(rec.get('loss'), '.4f')}  tokens/s {_fmt(rec.get('tokens_per_s'), '.0f')}"
            f"  mfu {_fmt(rec.get('mfu'), '.3f')}  mem {_fmt(rec.get('mem_gib'), '.2f')} GiB")


def _checkpoints(run_dir: Path) -> str:
    from m2dist.checkpoint.files import list_checkpoints
    from m2dist.config import config_from_dict

    import yaml

    saved = run_dir / "config.yaml"  # the resolved config, written by the trainer
    if not saved.is_file():
        return "-"
    cfg = config_from_dict(yaml.safe_load(saved.read_text()))
    found = list_checkpoints(cfg.checkpoint.dir)
    return f"{len(found)} in {cfg.checkpoint.dir}, newest {Path(found[0]).name}" if found else f"none in {cfg.checkpoint.dir}"


def status_text(run_dir: Path) -> str:
    run_dir = run_dir.resolve()
    ids = records.job_ids(run_dir)
    lines = [f"run          {run_dir}"]
    if not ids:
        lines.append("job          none recorded (no slurm/jobs in the run directory)")
    else:
        job_id = ids[-1]
        info = job_info(job_id)
        if info is None:
            lines.append(f"job          {job_id} (no longer known to slurmctld)")
        else:
            lines.append(f"job          {job_id} {info.get('JobState')}  nodes {info.get('NodeList') or '-'}"
                         f"  restarts {info.get('Restarts', '0')}  elapsed {info.get('RunTime')}"
                         f"  limit {info.get('TimeLimit')}")
        if len(ids) > 1:
            lines.append(f"earlier jobs {', '.join(ids[:-1])}")
    for attempt in records.attempts(run_dir):
        if attempt.get("event") == "end":
            lines.append(f"attempt      {attempt['job_id']}.{attempt['attempt']}: {attempt.get('outcome')} "
                         f"(rc {attempt.get('rc')}), {attempt['nodes']} node(s) x {attempt['nproc_per_node']}")
    starts = [a for a in records.attempts(run_dir) if a.get("event") == "start"]
    if starts:
        lines.append(f"logs         {starts[-1]['log_dir']}")
    if (run_dir / "PREEMPTED").exists():
        lines.append("marker       PREEMPTED (saved for a requeue)")
    lines.append(f"checkpoints  {_checkpoints(run_dir)}")
    metrics = records.train_metrics(run_dir)
    lines.append(f"metrics      {metrics_line(metrics[-1]) if metrics else 'none yet'}")
    return "\n".join(lines)
