"""``m2dist export CHECKPOINT --output model.safetensors``: one consolidated, unsharded model plus its config."""

from __future__ import annotations


def _export(args) -> int:
    import json

    from m2dist.checkpoint.export import export_checkpoint
    from m2dist.checkpoint.files import resolve_checkpoint, verify_checkpoint

    path = resolve_checkpoint(args.checkpoint)  # a checkpoint.dir root: the checkpoint its `latest` names
    problem = verify_checkpoint(path, collective=False)
    if problem:
        raise SystemExit(f"m2dist export: {path} is not a complete checkpoint: {problem}")
    print(json.dumps(export_checkpoint(path, args.output)))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint as one safetensors file (+ config)")
    parser.add_argument("checkpoint", help="checkpoint directory (.../step_<N>), or a checkpoint.dir root "
                        "(exports the checkpoint its `latest` file names)")
    parser.add_argument("--output", required=True, help="output .safetensors file")
    parser.set_defaults(func=_export)
