"""``m2dist sweep SPEC.yaml`` submits a grid of Slurm jobs; ``m2dist sweep report DIR`` tabulates and plots them."""

from __future__ import annotations

USAGE = "m2dist sweep [--dry-run] [--out-dir DIR] SPEC.yaml [overrides]  |  m2dist sweep report DIR [--out DIR]"


def _run(args) -> int:
    from m2dist.jobs import sweep as sweeps

    plan = sweeps.expand(args.target, args.rest, out_dir=args.out_dir)
    print(f"sweep {plan.name}: {len(plan.points)} job(s) into {plan.out_dir}")
    if args.dry_run:
        for point in plan.points:
            print(f"  {point.label}: nodes={point.options.nodes} gpus_per_node={point.options.gpus_per_node} "
                  f"{' '.join(point.overrides)}")
        return 0
    from m2dist.jobs.submit import SlurmError

    try:
        sweeps.submit(plan)
    except (SlurmError, OSError) as exc:
        print(f"m2dist: error: {exc}")
        return 1
    for point in plan.points:
        print(f"  job {point.job_id}  {point.label}  ({point.options.nodes} node(s))  {point.run_dir}")
    print(f"manifest {plan.out_dir}/sweep.json; when done: m2dist sweep report {plan.out_dir}")
    return 0


def _report(args) -> int:
    from pathlib import Path

    from m2dist.jobs.report import collect, markdown_table, write_report

    if len(args.rest) != 1:
        print(f"usage: {USAGE}")
        return 2
    root = Path(args.rest[0])
    if not root.is_dir():
        print(f"m2dist: error: not a directory: {root}")
        return 2
    paths = write_report(root, Path(args.out) if args.out else None)
    print(markdown_table(collect(root)), end="")
    for kind, path in paths.items():
        print(f"wrote {path}")
    return 0


def _dispatch(args) -> int:
    return _report(args) if args.target == "report" else _run(args)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="scale-out sweeps on Slurm: submit a grid, or report on it",
        usage=USAGE,
        description="`m2dist sweep SPEC.yaml` expands the grid of SPEC (see sweeps/) into one Slurm job per "
                    "point; `m2dist sweep report DIR` writes report.csv, report.md and PNG plots for the runs in DIR.")
    parser.add_argument("target", metavar="SPEC.yaml|report", help="a sweep spec, or the word 'report'")
    parser.add_argument("rest", nargs="*", metavar="ARG", help="for a spec: extra overrides; for report: DIR")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs without submitting them")
    parser.add_argument("--out-dir", default=None, help="spec: where the runs go (default: the spec's out_dir)")
    parser.add_argument("--out", default=None, help="report: where to write (default: DIR)")
    parser.set_defaults(func=_dispatch)
