"""``m2dist`` command line: discovers a subcommand per module in ``m2dist.cli.commands``.

A capability adds a command by adding a module with ``register(subparsers)`` that creates its
parser and sets ``func`` (called with the parsed args, returning an exit code). Heavy imports
(torch, deepspeed) belong inside ``func`` so that ``m2dist --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from m2dist import __version__
from m2dist.config.loader import ConfigError
from m2dist.utils.logging import setup_logging


def build_parser() -> argparse.ArgumentParser:
    from m2dist.cli import commands

    parser = argparse.ArgumentParser(
        prog="m2dist",
        description="Distributed pretraining for Monarch Mixer (M2) models.",
    )
    parser.add_argument("--version", action="version", version=f"m2dist {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="logging verbosity (default: info)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2 if args.command is None else 0
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"m2dist: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("m2dist: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The program's entry point (``m2dist``, ``python -m m2dist``): ``main``, then a quick exit with its code
    (m2dist/cli/exit.py). An exception propagates as usual, with Python's full exit."""
    from m2dist.cli.exit import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
