"""``m2dist export CHECKPOINT --output model.safetensors``: one consolidated, unsharded model plus its config."""

from __future__ import annotations


def _export(args) -> int:
    import json

    from m2dist.checkpoint.export import export_checkpoint
    from m2dist.checkpoint.manager import verify_checkpoint

    problem = verify_checkpoint(args.checkpoint, collective=False)
    if problem:
        raise SystemExit(f"m2dist export: {args.checkpoint} is not a complete checkpoint: {problem}")
    print(json.dumps(export_checkpoint(args.checkpoint, args.output)))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint as one safetensors file (+ config)")
    parser.add_argument("checkpoint", help="checkpoint directory (.../step_<N>)")
    parser.add_argument("--output", required=True, help="output .safetensors file")
    parser.set_defaults(func=_export)
