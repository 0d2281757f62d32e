"""``m2dist eval MODEL [key=value ...]``: evaluate a checkpoint directory or an exported .safetensors on one device.

Prints one JSON object: GPT validation loss and perplexity, BERT MLM loss and accuracy, or ViT top-1.
"""

from __future__ import annotations


def _eval(args) -> int:
    import json
    import os

    import torch

    from m2dist.config import config_from_dict, config_to_dict
    from m2dist.config.loader import _apply_override
    from m2dist.data.contract import task_of
    from m2dist.train.evaluate import evaluate
    from m2dist.train.split_loader import build_split_loader

    from m2dist.config.loader import ConfigError

    if not os.path.exists(args.model):
        raise ConfigError(f"{args.model}: no such checkpoint directory or exported .safetensors file")
    if os.path.isdir(args.model):
        from m2dist.checkpoint.export import consolidated_state_dict
        from m2dist.checkpoint.files import read_config, resolve_checkpoint
        from m2dist.models import build_model

        args.model = resolve_checkpoint(args.model)  # a checkpoint.dir root: the checkpoint `latest` names

        cfg = read_config(args.model)
        model = build_model(cfg.model)
        model.load_state_dict(consolidated_state_dict(args.model), strict=False)
    else:
        from m2dist.checkpoint.export import load_exported

        model, cfg = load_exported(args.model)
    if args.overrides:  # e.g. data.path=... when the data moved
        data = config_to_dict(cfg)
        for item in args.overrides:
            _apply_override(data, item, {})
        cfg = config_from_dict(data)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    from m2dist.kernels import accelerate

    model = accelerate(model).to(device)  # the fused kernels, as in training

    class _Single:  # the reader's view of a one-process layout
        tensor_size, data_size, tensor_rank, data_rank = 1, 1, 0, 0
        context_size, context_rank = 1, 0  # whole sequences, whatever parallel.context the run trained with

    loader = build_split_loader(cfg, args.split or cfg.data.eval_split, _Single(), training=False)
    steps = cfg.trainer.eval_steps if args.steps is None else args.steps
    result = evaluate(model, model, loader, task_of(cfg), steps, torch.float32, torch.device(device))
    print(json.dumps(result))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint or an exported model")
    parser.add_argument("model", help="checkpoint directory (.../step_<N>) or exported .safetensors")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the saved config, e.g. data.path=...")
    parser.add_argument("--split", default=None, help="split to evaluate (default: data.eval_split)")
    parser.add_argument("--steps", type=int, default=None,
                        help="micro-batches to evaluate (default: trainer.eval_steps; 0: the whole split)")
    parser.add_argument("--cpu", action="store_true", help="evaluate on CPU even if a GPU is present")
    parser.set_defaults(func=_eval)
