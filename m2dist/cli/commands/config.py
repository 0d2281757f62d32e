"""``m2dist config show CONFIG [key=value ...]``: print the resolved configuration."""

from __future__ import annotations


def _show(args) -> int:
    from m2dist.config import config_to_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    print(config_to_yaml(cfg), end="")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="inspect configurations")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved config (extends and overrides applied)")
    show.add_argument("config", help="YAML config file")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100")
    show.set_defaults(func=_show)
