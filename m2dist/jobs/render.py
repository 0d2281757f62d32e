"""Render ``slurm/train.sbatch`` for one run: its ``#SBATCH`` block replaced by the chosen resources,
the checkout, interpreter, config and overrides written in, so that the script alone reproduces the job.

There is one job script: the rendered one differs from ``slurm/train.sbatch`` only between the
``# --- sbatch directives ---`` markers and in the arguments it sets for itself.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

BEGIN_MARK = "# --- sbatch directives ---"
END_MARK = "# --- end sbatch directives ---"
REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "slurm" / "train.sbatch"


@dataclass
class SbatchOptions:
    nodes: int = 1
    gpus_per_node: Optional[int] = None
    time: Optional[str] = None  # Slurm time format: "MM", "HH:MM:SS", "D-HH:MM"
    partition: Optional[str] = None
    job_name: str = "m2dist"
    # SIGUSR1 this many seconds before the time limit: enough to finish a step and save a checkpoint.
    signal_seconds: int = 300
    # Further raw sbatch options, e.g. ["--account=proj", "--exclusive"].
    extra: list[str] = field(default_factory=list)


def directives(options: SbatchOptions, run_dir: Path, workdir: Path) -> list[str]:
    lines = [
        f"--job-name={options.job_name}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
    ]
    if options.gpus_per_node:
        # Whole nodes: with one task per node, the default of one CPU per task would pin torchrun, every
        # rank and their data loaders to a single core on clusters that constrain cores.
        lines += [f"--gpus-per-node={options.gpus_per_node}", "--exclusive"]
    if options.time:
        lines.append(f"--time={options.time}")
    if options.partition:
        lines.append(f"--partition={options.partition}")
    lines += [
        f"--signal=USR1@{options.signal_seconds}",
        "--requeue",
        # A requeued job keeps its id: append, so that every attempt's output stays in one file.
        "--open-mode=append",
        f"--output={run_dir}/logs/slurm-%j.out",
        f"--chdir={workdir}",
    ]
    lines += list(options.extra)
    return [f"#SBATCH {line}" for line in lines]


def render(config: str | Path, overrides: Sequence[str], options: SbatchOptions, run_dir: Path,
           workdir: Optional[Path] = None, python: Optional[str] = None, template: Path = TEMPLATE) -> str:
    """The job script for ``config`` + ``overrides`` as text (``sbatch`` reads it from a file or stdin)."""
    text = template.read_text()
    head, sep, rest = text.partition(BEGIN_MARK + "\n")
    old_block, sep2, body = rest.partition(END_MARK + "\n")
    if not sep or not sep2:
        raise ValueError(f"{template}: the '{BEGIN_MARK}' / '{END_MARK}' markers are missing")
    workdir = (workdir or Path.cwd()).resolve()
    config_path = Path(config).resolve()
    setup = [
        "# Rendered by `m2dist slurm submit`: the checkout, interpreter and arguments of this run.",
        f"export M2DIST_HOME={shlex.quote(str(REPO_ROOT))}",
        f"export M2DIST_PYTHON={shlex.quote(python or sys.executable)}",
        "set -- " + " ".join(shlex.quote(a) for a in [str(config_path), *overrides]),
    ]
    block = "\n".join(directives(options, run_dir, workdir)) + "\n"
    return head + BEGIN_MARK + "\n" + block + END_MARK + "\n\n" + "\n".join(setup) + "\n" + body
