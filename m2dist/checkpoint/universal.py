"""DeepSpeed's universal checkpoint form (one folder per parameter with fp32 weights and optimizer moments, free of
any layout): the conversion a resume at another data-/tensor-parallel size or ZeRO stage loads, and what its load
needs from m2dist."""

from __future__ import annotations

import contextlib
import io
import os
import shutil

import torch

from m2dist.checkpoint import manifest
from m2dist.utils.logging import get_logger

log = get_logger(__name__)


def _wrap_plain_universal_tensors(folder: str) -> None:
    """DeepSpeed 0.19.8 writes the universal files of a ZeRO-3 checkpoint without tensor parallelism as bare tensors,
    every other kind as ``{"param": tensor, ...}``. ZeRO-3's universal load cuts a parameter for the loading tensor
    rank only when the file is such a dict, so a ZeRO-3 TP=1 checkpoint could not be loaded at TP=2 (each rank got
    the full tensor: "start + length exceeds dimension size"). Store them as dicts as well; the loaders read both."""
    from deepspeed.checkpoint.constants import PARAM

    zero = os.path.join(folder, "zero")
    for name in os.listdir(zero):
        param_dir = os.path.join(zero, name)
        if not os.path.isdir(param_dir):
            continue
        for f in ("fp32.pt", "exp_avg.pt", "exp_avg_sq.pt"):  # not step.pt (ZeRO-1/2: a bare scalar, read as such)
            full = os.path.join(param_dir, f)
            if not os.path.exists(full):
                continue
            value = torch.load(full, map_location="cpu", weights_only=False)
            if torch.is_tensor(value):
                torch.save({PARAM: value}, full)


def convert_to_universal(path: str, out: str) -> None:
    """DeepSpeed checkpoint -> universal (one folder per parameter with fp32 weights and optimizer moments).

    Written under a temporary name and committed by rename, with a manifest, like a checkpoint."""
    from types import SimpleNamespace

    from deepspeed.checkpoint import ds_to_universal

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    log.info("converting %s to DeepSpeed's universal form in %s", path, out)
    args = SimpleNamespace(input_folder=path, output_folder=tmp, num_extract_workers=1, num_merge_workers=1,
                           keep_temp_folder=False, strict=True, inject_missing_state=False)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line per parameter
        ds_to_universal.main(args)
    # ds_to_universal also writes a `latest_universal` file beside its output folder: not ours to keep.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(os.path.dirname(tmp), "latest_universal"))
    _wrap_plain_universal_tensors(tmp)
    manifest.write_manifest(tmp, {f: {"size": os.path.getsize(os.path.join(tmp, f)), "sha256": ""}
                                  for f in manifest.list_files(tmp)})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


@contextlib.contextmanager
def deepspeed_tensor_group(groups):
    """DeepSpeed 0.19.8's ZeRO-3 universal load asks ``deepspeed.utils.groups.get_tensor_model_parallel_group()`` for
    the tensor group when it cuts a parameter for its tensor rank; only DeepSpeed's own AutoTP sets that group (ZeRO-1/2
    read it from the ``mpu`` m2dist passes). Set it to megatron-core's tensor group for the load, and put it back."""
    from deepspeed.utils import groups as ds_groups

    tensor_group = getattr(groups, "tensor_group", None) if groups is not None else None
    if tensor_group is None or getattr(groups, "tensor_size", 1) == 1 or \
            ds_groups._TENSOR_MODEL_PARALLEL_GROUP is not None:
        yield
        return
    ds_groups._TENSOR_MODEL_PARALLEL_GROUP = tensor_group
    try:
        yield
    finally:
        ds_groups._TENSOR_MODEL_PARALLEL_GROUP = None
