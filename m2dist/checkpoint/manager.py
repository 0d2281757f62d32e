"""Checkpoint manager: save (sharded, atomic, checksummed), find the checkpoint to resume from, load (also into a
different data-/tensor-parallel layout), keep the last K.

Model and optimizer go through DeepSpeed's own sharded format (one model file per tensor rank, ZeRO optimizer shards
per data x tensor rank): it restores bit-exactly for every ZeRO stage (stack-facts §2). Everything DeepSpeed does
not own -- the step, consumed samples, each rank's data-loader and RNG state, the resolved config -- is written
next to it. Resharding goes through DeepSpeed's universal (per-parameter, layout-free) form, converted on demand.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from m2dist.checkpoint import manifest
from m2dist.utils.logging import get_logger

log = get_logger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
RANKS_DIR = "ranks"
LATEST = "latest"
UNIVERSAL_DIR = ".universal"


@dataclass
class Resumable:
    """Loop state saved with every checkpoint."""

    step: int = 0
    consumed_samples: int = 0
    tokens: int = 0


@dataclass
class Layout:
    world_size: int
    data_parallel: int
    tensor_parallel: int
    zero_stage: int
    global_batch_size: int
    micro_batch_size: int


@dataclass
class LoadPlan:
    path: str
    trainer_state: dict
    # How the model/optimizer are read: "native" (same layout, or ZeRO-0 where the optimizer is not partitioned)
    # or "universal" (per-parameter conversion: different data-/tensor-parallel size or ZeRO stage).
    mode: str
    reasons: list = field(default_factory=list)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _broadcast(obj):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def step_of(path: str) -> int:
    m = STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    if not m:
        raise ValueError(f"{path} is not a checkpoint directory (expected .../step_<N>)")
    return int(m.group(1))


def list_checkpoints(root: str) -> list[str]:
    """Committed-looking checkpoint directories (step_<N>), newest first. Temporary ones are never listed."""
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if STEP_DIR.match(n) and os.path.isdir(os.path.join(root, n))]
    return [os.path.join(root, n) for n in sorted(names, key=lambda n: -int(STEP_DIR.match(n).group(1)))]


def verify_checkpoint(path: str, collective: bool = True) -> Optional[str]:
    """None if ``path`` is a complete checkpoint, else the reason (see :func:`manifest.check`)."""
    return manifest.check(path, collective=collective)


def read_trainer_state(path: str) -> dict:
    with open(os.path.join(path, TRAINER_STATE)) as f:
        return json.load(f)


def parameter_layout(model: torch.nn.Module) -> dict:
    """Per-parameter shard description: local shape and, for tensor-parallel parameters, the partition dimension
    (megatron-core's ``tensor_model_parallel``/``partition_dim``/``partition_stride`` attributes). With it a
    checkpoint says how to rebuild each global tensor from the tensor ranks' files."""
    out = {}
    for name, p in model.named_parameters():
        entry: dict[str, Any] = {"shape": list(getattr(p, "ds_shape", p.shape))}
        if getattr(p, "tensor_model_parallel", False):
            entry["partition_dim"] = int(getattr(p, "partition_dim", 0))
            entry["partition_stride"] = int(getattr(p, "partition_stride", 1))
        out[name] = entry
    return out


class CheckpointManager:
    def __init__(self, ckpt_cfg, layout: Layout, groups=None):
        self.cfg = ckpt_cfg
        self.root = ckpt_cfg.dir
        self.layout = layout
        self.groups = groups
        if _rank() == 0:
            os.makedirs(self.root, exist_ok=True)
            # Leftovers of a job that died while writing: never loadable (no commit), only in the way.
            for name in os.listdir(self.root):
                if name.startswith(".tmp_step_"):
                    log.warning("removing uncommitted checkpoint %s", os.path.join(self.root, name))
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        _barrier()

    # ------------------------------------------------------------------ save
    def save(self, engine, state: Resumable, rank_state: dict, config_yaml: str, model=None,
             universal_info: Optional[dict] = None) -> str:
        """Collective. Writes ``step_<N>`` atomically and returns its path."""
        name = f"step_{state.step}"
        tmp_tag = f".tmp_{name}"
        tmp = os.path.join(self.root, tmp_tag)
        final = os.path.join(self.root, name)
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        client_state = {
            "m2dist": asdict(state),
            # Required by DeepSpeed's universal conversion; a tensor-parallel model supplies its parameter patterns.
            "universal_checkpoint_info": universal_info or {},
            "iteration": state.step,
        }
        engine.save_checkpoint(self.root, tag=tmp_tag, client_state=client_state, save_latest=False)
        os.makedirs(os.path.join(tmp, RANKS_DIR), exist_ok=True)
        torch.save(rank_state, os.path.join(tmp, RANKS_DIR, f"rank_{_rank():05d}.pt"))
        if _rank() == 0:
            trainer_state = {"resumable": asdict(state), "layout": asdict(self.layout),
                             "parameters": parameter_layout(model) if model is not None else {}}
            _write_atomic(os.path.join(tmp, TRAINER_STATE), json.dumps(trainer_state, indent=1))
            _write_atomic(os.path.join(tmp, CONFIG_FILE), config_yaml)
        _barrier()
        files = _broadcast(manifest.list_files(tmp) if _rank() == 0 else None)
        entries = manifest.hash_files(tmp, files)
        if _rank() == 0:
            manifest.write_manifest(tmp, entries)
            if os.path.exists(final):  # a re-save of the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)  # the commit
            _fsync_dir(self.root)
            _write_atomic(os.path.join(self.root, LATEST), name + "\n")  # written last
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        keep = self.cfg.keep_last
        if keep <= 0:
            return
        committed = [p for p in list_checkpoints(self.root) if os.path.exists(os.path.join(p, manifest.MANIFEST))]
        for old in committed[keep:]:
            log.info("removing old checkpoint %s (checkpoint.keep_last=%d)", old, keep)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(os.path.join(self.root, UNIVERSAL_DIR, os.path.basename(old)), ignore_errors=True)

    # ------------------------------------------------------------------ resume
    def find_resume(self, resume: str) -> Optional[str]:
        """Collective. The checkpoint to resume from: None for ``none`` or when there is none yet."""
        if resume in ("none", "", None):
            return None
        if resume != "auto":
            problem = verify_checkpoint(resume)
            if problem:
                raise RuntimeError(f"trainer.resume={resume}: not a complete checkpoint: {problem}")
            return resume
        candidates = _broadcast(list_checkpoints(self.root) if _rank() == 0 else None)
        for path in candidates:
            problem = verify_checkpoint(path)
            if problem is None:
                return path
            if _rank() == 0:
                log.warning("skipping checkpoint %s: %s; trying the previous one", path, problem)
        return None

    def plan_load(self, path: str) -> LoadPlan:
        state = read_trainer_state(path)
        saved = Layout(**state["layout"])
        now = self.layout
        reasons = []
        if saved.global_batch_size != now.global_batch_size:
            # The data order is defined per global batch: changing it would repeat or skip samples.
            raise RuntimeError(
                f"{path} was trained with trainer.global_batch_size={saved.global_batch_size}; resuming needs the "
                f"same global batch (now {now.global_batch_size})"
            )
        if saved.tensor_parallel != now.tensor_parallel:
            reasons.append(f"tensor parallel {saved.tensor_parallel} -> {now.tensor_parallel}")
        if saved.data_parallel != now.data_parallel:
            reasons.append(f"data parallel {saved.data_parallel} -> {now.data_parallel}")
        if saved.zero_stage != now.zero_stage:
            reasons.append(f"ZeRO stage {saved.zero_stage} -> {now.zero_stage}")
        if not reasons:
            return LoadPlan(path, state, "native")
        if saved.zero_stage == 0 and now.zero_stage == 0 and saved.tensor_parallel == now.tensor_parallel:
            # ZeRO-0 keeps the whole optimizer state in the per-tensor-rank model file: any data-parallel size reads it.
            return LoadPlan(path, state, "native", reasons)
        if saved.zero_stage == 0 or now.zero_stage == 0:
            raise RuntimeError(
                f"cannot reshard {path} ({', '.join(reasons)}): DeepSpeed's universal form needs ZeRO stage >= 1 on "
                f"both sides; resume with deepspeed.zero_stage={saved.zero_stage} and the saved layout"
            )
        return LoadPlan(path, state, "universal", reasons)

    def universal_path(self, path: str) -> tuple[str, str]:
        """(load_dir, tag) of the universal conversion of ``path``, making it first if needed. Collective."""
        load_dir = os.path.join(self.root, UNIVERSAL_DIR)
        tag = os.path.basename(os.path.normpath(path))
        out = os.path.join(load_dir, tag)
        if _rank() == 0 and not os.path.exists(os.path.join(out, manifest.MANIFEST)):
            convert_to_universal(path, out)
        _barrier()
        return load_dir, tag

    def load(self, engine, plan: LoadPlan) -> Optional[dict]:
        """Collective. Restores engine (model, optimizer, LR schedule); returns this rank's saved rank state if the
        layout is unchanged, else None (the caller re-derives per-rank state)."""
        if plan.mode == "universal":
            load_dir, tag = self.universal_path(plan.path)
        else:
            load_dir, tag = os.path.dirname(os.path.normpath(plan.path)), os.path.basename(os.path.normpath(plan.path))
        hyper = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in engine.optimizer.param_groups]
        loaded, _ = engine.load_checkpoint(load_dir, tag=tag, load_module_strict=True, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load {plan.path}")
        if plan.mode == "universal":
            _restore_group_hyperparameters(engine, hyper)
        if plan.reasons:
            return None
        return torch.load(os.path.join(plan.path, RANKS_DIR, f"rank_{_rank():05d}.pt"), weights_only=False)

    @staticmethod
    def saved_rank_states(path: str) -> list[dict]:
        files = sorted(os.listdir(os.path.join(path, RANKS_DIR)))
        return [torch.load(os.path.join(path, RANKS_DIR, f), weights_only=False) for f in files]


def _restore_group_hyperparameters(engine, hyper: list[dict]) -> None:
    """DeepSpeed 0.19's ZeRO-3 universal load copies param group 0's hyperparameters (weight decay, initial LR, ...)
    into every group, which would give the no-decay and filter groups the decay group's settings. They come from the
    config anyway, so put back the freshly built ones, and each group's current LR from the restored schedule."""
    groups = engine.optimizer.param_groups
    last_lr = engine.lr_scheduler.get_last_lr() if engine.lr_scheduler is not None else None
    for i, (group, saved) in enumerate(zip(groups, hyper)):
        group.update(saved)
        if last_lr is not None:
            group["lr"] = last_lr[i]


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
    manifest.write_manifest(tmp, {f: {"size": os.path.getsize(os.path.join(tmp, f)), "sha256": ""}
                                  for f in manifest.list_files(tmp)})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
