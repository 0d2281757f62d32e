"""Submit a rendered job script with ``sbatch`` and remember its job id in the run directory."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from m2dist.jobs.render import SbatchOptions, render
from m2dist.jobs.run_dir import resolve_run_dir, slurm_dir


class SlurmError(RuntimeError):
    """A Slurm command failed; the message carries its stderr."""


@dataclass
class Submission:
    run_dir: Path
    script: str
    script_path: Optional[Path] = None
    job_id: Optional[str] = None


def prepare(config: str | Path, overrides: Sequence[str], options: SbatchOptions) -> Submission:
    """Validate the config (one-line error on a typo) and render its job script; nothing is written."""
    run_dir = resolve_run_dir(config, overrides)
    if options.job_name == "m2dist":
        options.job_name = f"m2dist-{run_dir.name}"
    return Submission(run_dir=run_dir, script=render(config, list(overrides), options, run_dir))


def sbatch(submission: Submission, env: Optional[dict] = None) -> Submission:
    """Write the script to ``<run_dir>/slurm/job.sbatch``, submit it, record the job id."""
    sdir = slurm_dir(submission.run_dir)
    (submission.run_dir / "logs").mkdir(parents=True, exist_ok=True)  # sbatch does not create --output's folder
    sdir.mkdir(parents=True, exist_ok=True)
    path = sdir / "job.sbatch"
    path.write_text(submission.script)
    path.chmod(0o755)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True,
                          env=env if env is not None else os.environ.copy())
    if proc.returncode != 0:
        raise SlurmError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
    with open(sdir / "jobs", "a") as f:
        f.write(job_id + "\n")
    submission.script_path, submission.job_id = path, job_id
    return submission
