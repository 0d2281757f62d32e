"""``m2dist train --config FILE [key=value ...]``: train under torchrun, the deepspeed launcher, srun or alone.

Exit codes: 0 done, 85 preempted (checkpoint saved; requeue and resume with trainer.resume=auto).
"""

from __future__ import annotations


def _train(args) -> int:
    from m2dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    from m2dist.cli.preflight import check_run

    check_run(cfg)  # everything the run needs, before any work
    from m2dist.train.trainer import train

    return train(cfg)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model (one process per GPU, or per CPU rank)")
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100")
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=None)
    parser.set_defaults(func=_train)
