"""``m2dist slurm submit|status``: render and submit ``slurm/train.sbatch`` for a config; show a run's job."""

from __future__ import annotations


def _submit(args) -> int:
    from m2dist.jobs.render import SbatchOptions
    from m2dist.jobs.submit import SlurmError, prepare, sbatch

    options = SbatchOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time,
                            partition=args.partition, signal_seconds=args.signal_seconds,
                            extra=list(args.sbatch_arg or []))
    if args.job_name:
        options.job_name = args.job_name
    submission = prepare(args.config, args.overrides, options)
    if args.dry_run:
        print(submission.script, end="")
        return 0
    try:
        sbatch(submission)
    except (SlurmError, OSError) as exc:
        print(f"m2dist: error: {exc}")
        return 1
    print(f"submitted job {submission.job_id}: {args.nodes} node(s), script {submission.script_path}")
    print(f"run dir {submission.run_dir}; follow it with: m2dist slurm status {submission.run_dir}")
    return 0


def _status(args) -> int:
    from pathlib import Path

    from m2dist.jobs.status import status_text

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        print(f"m2dist: error: run directory not found: {run_dir}")
        return 2
    print(status_text(run_dir))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("slurm", help="submit training jobs to Slurm and follow them")
    sub = parser.add_subparsers(dest="slurm_command", metavar="ACTION", required=True)

    submit = sub.add_parser("submit", help="render slurm/train.sbatch for a config and sbatch it (or print it)")
    submit.add_argument("--config", required=True, help="YAML run config")
    submit.add_argument("--nodes", type=int, default=1, help="nodes (one torchrun per node; default 1)")
    submit.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs per node (--gpus-per-node; default: none requested, CPU/gloo if none visible)")
    submit.add_argument("--time", default=None, help="time limit, e.g. 04:00:00 (default: the partition's)")
    submit.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    submit.add_argument("--job-name", default=None, help="job name (default: m2dist-<run dir name>)")
    submit.add_argument("--signal-seconds", type=int, default=300,
                        help="SIGUSR1 this long before the time limit, to save and requeue (default 300)")
    submit.add_argument("--sbatch-arg", action="append", metavar="ARG",
                        help="extra sbatch option, repeatable, e.g. --sbatch-arg=--account=proj")
    submit.add_argument("--dry-run", action="store_true", help="print the job script instead of submitting it")
    submit.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100")
    submit.set_defaults(func=_submit)

    status = sub.add_parser("status", help="a run's job state, attempts, checkpoints and latest metrics")
    status.add_argument("run", help="the run directory (trainer.run_dir)")
    status.set_defaults(func=_status)
