"""Where a run's files live, resolved from its config: ``python -m m2dist.jobs.run_dir CONFIG [overrides]``.

The batch script calls this before starting any node, so a config error fails the job at once.
Layout under the run directory (besides what the trainer writes: metrics.jsonl, checkpoints, PREEMPTED):
``slurm/job.sbatch`` (the rendered script), ``slurm/jobs`` (job ids, one a line),
``slurm/attempts.jsonl`` (start/end of every attempt), ``logs/<job id>.<attempt>/`` (batch.log, <node>.log).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable


def resolve_run_dir(config: str | Path, overrides: Iterable[str] = ()) -> Path:
    from m2dist.config import load_config

    cfg = load_config(config, list(overrides))
    return Path(cfg.trainer.run_dir).resolve()


def slurm_dir(run_dir: Path) -> Path:
    return run_dir / "slurm"


def main(argv: list[str]) -> int:
    from m2dist.config.loader import ConfigError

    if not argv:
        print("usage: python -m m2dist.jobs.run_dir CONFIG [key=value ...]", file=sys.stderr)
        return 2
    try:
        print(resolve_run_dir(argv[0], argv[1:]))
    except ConfigError as exc:
        print(f"m2dist: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
