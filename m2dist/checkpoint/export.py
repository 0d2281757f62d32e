"""Consolidate a sharded checkpoint into one unsharded model, and write/read it as safetensors + config.

The exported file holds the single-device model's state dict (keys as ``m2dist.models.build_model`` names them) in
fp32 and the resolved run config as JSON metadata (``m2dist_config``), so ``load_exported`` rebuilds the model on
one device with nothing else.
"""

from __future__ import annotations

import glob
import json
import os
import re

import torch

from m2dist.checkpoint.files import read_config, read_trainer_state, step_of
from m2dist.utils.logging import get_logger

log = get_logger(__name__)

CONFIG_METADATA_KEY = "m2dist_config"


def _merge_tensor_parallel(shards: list[dict], model_config) -> dict:
    """One state dict from the tensor ranks' state dicts (cut by m2dist.parallel.plan's specs: exact concatenation,
    including the strided layouts of the fused projections)."""
    if len(shards) == 1:
        return shards[0]
    from m2dist.parallel.sharding import gather_state_dict

    return gather_state_dict(shards, model_config)


def consolidated_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of checkpoint ``path`` (any ZeRO stage; tensor ranks merged)."""
    state = read_trainer_state(path)
    layout = state["layout"]
    if layout["zero_stage"] == 0:
        # ZeRO-0 keeps the whole model (in its training dtype) in each tensor rank's model file.
        files = sorted(glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")))
        shards = [{k: v.float() for k, v in torch.load(f, map_location="cpu", weights_only=False)["module"].items()}
                  for f in files]
        return _merge_tensor_parallel(shards, read_config(path).model)
    if layout["tensor_parallel"] > 1:
        # ZeRO >= 1 with tensor parallelism: DeepSpeed's universal conversion merges the tensor slices (given the
        # model's universal_checkpoint_info patterns) into one fp32 tensor per parameter.
        # The conversion (larger than the checkpoint: moments included) goes to a temporary directory that is removed
        # afterwards, never next to the user's checkpoint.
        import tempfile

        from m2dist.checkpoint.universal import convert_to_universal

        sd = {}
        with tempfile.TemporaryDirectory(prefix="m2dist-export-") as work:
            out_dir = os.path.join(work, "universal")
            log.info("merging the tensor-parallel shards of %s in a temporary directory %s (removed afterwards; "
                     "TMPDIR sets where)", path, work)
            convert_to_universal(path, out_dir)
            for d in sorted(os.listdir(os.path.join(out_dir, "zero"))):
                f = os.path.join(out_dir, "zero", d, "fp32.pt")
                if os.path.exists(f):
                    value = torch.load(f, map_location="cpu", weights_only=False)
                    sd[d] = value["param"] if isinstance(value, dict) else value
        # A tied weight may appear under both names, merged only under the one DeepSpeed tracks as the parameter:
        # keep the canonical names (export restores the aliases from the model's tying).
        from m2dist.models import build_model

        canonical = {n for n, _ in build_model(read_config(path).model).named_parameters()}
        return {k: v for k, v in sd.items() if k in canonical}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, tag = os.path.dirname(os.path.normpath(path)), os.path.basename(os.path.normpath(path))
    return dict(get_fp32_state_dict_from_zero_checkpoint(root, tag=tag))


def _normalise_key(key: str) -> str:
    # torch.compile of the whole model prefixes "_orig_mod."; strip it so keys are those of the plain model.
    return re.sub(r"(^|\.)_orig_mod\.", r"\1", key)


def export_checkpoint(path: str, output: str) -> dict:
    """Write ``output`` (.safetensors) from checkpoint ``path``; returns a summary."""
    from safetensors.torch import save_file

    from m2dist.config import config_to_dict
    from m2dist.models import build_model

    cfg = read_config(path)
    sd = {_normalise_key(k): v for k, v in consolidated_state_dict(path).items()}
    model = build_model(cfg.model)
    # Strict load into the plain single-device model: proves the export is complete and correctly named, and fills
    # tied weights (saved once) into every name the model uses.
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {n for n in missing if _is_tied(model, n, sd)}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{path}: state dict does not match the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    # safetensors refuses tensors that share memory (tied embeddings): store a copy per name.
    tensors = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {CONFIG_METADATA_KEY: json.dumps(config_to_dict(cfg)), "step": str(step_of(path)), "format": "pt"}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    save_file(tensors, output + ".tmp", metadata=meta)
    os.replace(output + ".tmp", output)
    return {"output": output, "step": step_of(path), "tensors": len(tensors),
            "parameters": sum(p.numel() for p in model.parameters())}


def _is_tied(model, name: str, sd: dict) -> bool:
    """``name`` is missing from the checkpoint only because it is the same Parameter as one that is present."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(params.get(k) is target for k in sd if k != name)


def load_exported(path: str, device: str = "cpu"):
    """(model, config) from an exported .safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from m2dist.config import config_from_dict
    from m2dist.models import build_model

    with safe_open(path, framework="pt") as f:
        cfg = config_from_dict(json.loads(f.metadata()[CONFIG_METADATA_KEY]))
    model = build_model(cfg.model)
    model.load_state_dict(load_file(path, device="cpu"), strict=True)
    return model.to(device), cfg
