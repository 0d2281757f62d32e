"""Checkpoint manager: save (sharded, atomic, checksummed), find the checkpoint to resume from, load (also into a
different data-/tensor-parallel layout), keep the last K.

Model and optimizer go through DeepSpeed's own sharded format (one model file per tensor rank, ZeRO optimizer shards
per data x tensor rank): it restores bit-exactly for every ZeRO stage (stack-facts §2). Everything DeepSpeed does
not own -- the step, consumed samples, each rank's data-loader and RNG state, the resolved config -- is written
next to it. Resharding goes through DeepSpeed's universal (per-parameter, layout-free) form, converted on demand
(``universal.py``), or for ZeRO-0 at another tensor-parallel size through ``zero0_reshard.py``; ``layout.py`` decides
which.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.distributed as dist

from m2dist.checkpoint import manifest
from m2dist.checkpoint.atomic import fsync_dir, write_atomic
from m2dist.checkpoint.files import (
    CONFIG_FILE,
    CONVERSIONS_DIR,
    LATEST,
    LEGACY_CONVERSION_DIRS,
    RANKS_DIR,
    TRAINER_STATE,
    list_checkpoints,
    verify_checkpoint,
)
from m2dist.checkpoint.host_copy import HostCopyCheckpointEngine, to_host
from m2dist.checkpoint.layout import Layout, LoadPlan, parameter_layout, plan_load
from m2dist.checkpoint.optimizer_repair import (
    group_hyperparameters,
    restore_group_hyperparameters,
    unshare_step_counters,
)
from m2dist.checkpoint.universal import convert_to_universal, deepspeed_tensor_group
from m2dist.checkpoint.zero0_reshard import optimizer_group_names, reshard_zero0
from m2dist.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class Resumable:
    """Loop state saved with every checkpoint."""

    step: int = 0
    consumed_samples: int = 0
    tokens: int = 0


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier(group=None) -> None:
    if dist.is_initialized():
        dist.barrier(group=group)


def _broadcast(obj, group=None):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


# Test hook: "<step>:<rank>" makes that rank's background writer of that step's asynchronous save stop before writing
# anything (after creating <tmp>/STALLED_rank_<R>), so a test can kill -9 the job during the write. Unused in
# production.
ASYNC_STALL_ENV = "M2DIST_TEST_ASYNC_SAVE_STALL"


def _test_stall(tmp: str, step: int) -> None:
    spec = os.environ.get(ASYNC_STALL_ENV, "")
    if spec and spec == f"{step}:{_rank()}":
        os.makedirs(tmp, exist_ok=True)
        open(os.path.join(tmp, f"STALLED_rank_{_rank()}"), "w").close()
        while True:
            time.sleep(1)


class CheckpointManager:
    def __init__(self, ckpt_cfg, layout: Layout, groups=None):
        self.cfg = ckpt_cfg
        self.root = ckpt_cfg.dir
        self.layout = layout
        self.groups = groups
        self.async_save = bool(getattr(ckpt_cfg, "async_save", False))
        self._pending: Optional[threading.Thread] = None
        self._pending_error: Optional[BaseException] = None
        # The background writer's collectives (completion barrier, hashing, commit) on a gloo group of their own.
        self._async_group = dist.new_group(backend="gloo") \
            if self.async_save and dist.is_initialized() and dist.get_world_size() > 1 else None
        if _rank() == 0:
            os.makedirs(self.root, exist_ok=True)
            # Leftovers of a job that died while writing: never loadable (no commit), only in the way.
            for name in os.listdir(self.root):
                if name.startswith(".tmp_step_"):
                    log.warning("removing uncommitted checkpoint %s", os.path.join(self.root, name))
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
                elif name == CONVERSIONS_DIR or name in LEGACY_CONVERSION_DIRS:
                    # Temporary conversions of an earlier resume (removed after loading; left only by a dead job).
                    log.info("removing temporary conversions %s", os.path.join(self.root, name))
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        _barrier()

    # ------------------------------------------------------------------ save
    def save(self, engine, state: Resumable, rank_state: dict, config_yaml: str, model=None,
             universal_info: Optional[dict] = None, blocking: bool = True) -> str:
        """Collective. Writes ``step_<N>`` atomically and returns its path.

        With ``checkpoint.async_save`` and ``blocking=False`` it returns once the state is copied to host memory; the
        files are written by a background thread while training goes on, and committed (manifest, rename,
        ``latest``) only when every rank's files are complete: :meth:`wait` returns then. A save always waits for
        the previous one first, so at most one is in flight."""
        self.wait()
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
        trainer_state = {"resumable": asdict(state), "layout": asdict(self.layout),
                         "parameters": parameter_layout(model) if model is not None else {}}
        if not (self.async_save and not blocking):
            engine.save_checkpoint(self.root, tag=tmp_tag, client_state=client_state, save_latest=False)
            self._write_own_files(tmp, rank_state, trainer_state, config_yaml)
            _barrier()
            self._commit(tmp, final, name, group=None)
            return final
        # Asynchronous: DeepSpeed's collectives and its state gathering run here, as in a synchronous save, but each
        # file it would write is captured as a host copy; the background thread writes and commits them.
        capture = HostCopyCheckpointEngine(engine.checkpoint_engine)
        engine.checkpoint_engine = capture
        try:
            engine.save_checkpoint(self.root, tag=tmp_tag, client_state=client_state, save_latest=False)
        finally:
            engine.checkpoint_engine = capture.inner
        rank_state = to_host(rank_state)
        self._pending = threading.Thread(
            target=self._write_in_background, name=f"m2dist-save-{name}", daemon=True,
            args=(capture.files, tmp, final, name, rank_state, trainer_state, config_yaml, state.step))
        self._pending.start()
        return final

    def wait(self) -> None:
        """Block until an asynchronous save in flight is committed (no-op otherwise); re-raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.join()
        error, self._pending_error = self._pending_error, None
        if error is not None:
            raise RuntimeError(f"asynchronous checkpoint save failed: {error}") from error

    def _write_own_files(self, tmp: str, rank_state: dict, trainer_state: dict, config_yaml: str) -> None:
        os.makedirs(os.path.join(tmp, RANKS_DIR), exist_ok=True)
        torch.save(rank_state, os.path.join(tmp, RANKS_DIR, f"rank_{_rank():05d}.pt"))
        if _rank() == 0:
            write_atomic(os.path.join(tmp, TRAINER_STATE), json.dumps(trainer_state, indent=1))
            write_atomic(os.path.join(tmp, CONFIG_FILE), config_yaml)

    def _write_in_background(self, files, tmp, final, name, rank_state, trainer_state, config_yaml, step) -> None:
        try:
            _test_stall(tmp, step)
            for path, obj in files:
                with open(path, "wb") as f:
                    torch.save(obj, f)
                    f.flush()
                    os.fsync(f.fileno())
            self._write_own_files(tmp, rank_state, trainer_state, config_yaml)
            # Every rank's files are complete once all ranks pass this barrier (on a gloo group of its own: the
            # training collectives of the main thread run on the others).
            _barrier(self._async_group)
            self._commit(tmp, final, name, group=self._async_group)
            if _rank() == 0:
                log.info("saved checkpoint %s (written in the background)", final)
        except BaseException as exc:  # reported by wait(); the checkpoint stays uncommitted
            log.error("asynchronous save of %s failed: %s", final, exc)
            self._pending_error = exc

    def _commit(self, tmp: str, final: str, name: str, group) -> None:
        """Collective over ``group``: hash every file (spread over ranks), then rank 0 writes the manifest, renames
        the directory into place, writes ``latest`` and prunes."""
        files = _broadcast(manifest.list_files(tmp) if _rank() == 0 else None, group)
        entries = manifest.hash_files(tmp, files, group=group)
        if _rank() == 0:
            manifest.write_manifest(tmp, entries)
            if os.path.exists(final):  # a re-save of the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)  # the commit
            fsync_dir(self.root)
            write_atomic(os.path.join(self.root, LATEST), name + "\n")  # written last
            self._prune()
        _barrier(group)

    def _prune(self) -> None:
        keep = self.cfg.keep_last
        if keep <= 0:
            return
        committed = [p for p in list_checkpoints(self.root) if os.path.exists(os.path.join(p, manifest.MANIFEST))]
        for old in committed[keep:]:
            log.info("removing old checkpoint %s (checkpoint.keep_last=%d)", old, keep)
            shutil.rmtree(old, ignore_errors=True)

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
        """How ``path`` is loaded at this job's layout (:func:`m2dist.checkpoint.layout.plan_load`)."""
        return plan_load(path, self.layout)

    def _conversion(self, plan: LoadPlan, engine) -> tuple[str, str]:
        """(load_dir, tag) of the temporary conversion of ``plan.path`` for this layout, made by rank 0 under
        ``<checkpoint.dir>/.conversions/``. Collective."""
        load_dir = os.path.join(self.root, CONVERSIONS_DIR)
        step_name = os.path.basename(os.path.normpath(plan.path))
        if plan.mode == "universal":
            tag = f"universal_{step_name}"
        else:
            tag = f"zero0_tp{self.layout.tensor_parallel}_{step_name}"
        out = os.path.join(load_dir, tag)
        # The ZeRO-0 conversion needs the optimizer's parameter order, which every rank has: rank 0 uses its own.
        group_names = optimizer_group_names(engine) if plan.mode == "zero0_tp" else None
        if _rank() == 0:
            if plan.mode == "universal":
                convert_to_universal(plan.path, out)
            else:
                reshard_zero0(plan.path, out, self.layout.tensor_parallel, self.layout.data_parallel, group_names)
        _barrier()
        return load_dir, tag

    def load(self, engine, plan: LoadPlan) -> Optional[dict]:
        """Collective. Restores engine (model, optimizer, LR schedule); returns this rank's saved rank state if the
        layout is unchanged, else None (the caller re-derives per-rank state)."""
        converted = plan.mode in ("universal", "zero0_tp")
        if converted:
            load_dir, tag = self._conversion(plan, engine)
        else:
            load_dir, tag = os.path.dirname(os.path.normpath(plan.path)), os.path.basename(os.path.normpath(plan.path))
        hyper = group_hyperparameters(engine)
        try:
            with deepspeed_tensor_group(self.groups if plan.mode == "universal" else None):
                loaded, _ = engine.load_checkpoint(load_dir, tag=tag, load_module_strict=True,
                                                   load_optimizer_states=True, load_lr_scheduler_states=True)
        finally:
            if converted:
                # Temporary: every rank has read it (or failed to). A resume that dies before its next save
                # converts again.
                _barrier()
                if _rank() == 0:
                    shutil.rmtree(os.path.join(load_dir, tag), ignore_errors=True)
                    with contextlib.suppress(OSError):
                        os.rmdir(load_dir)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load {plan.path}")
        if plan.mode == "universal":
            restore_group_hyperparameters(engine, hyper)
            unshare_step_counters(engine)
        if plan.reasons:
            return None
        return torch.load(os.path.join(plan.path, RANKS_DIR, f"rank_{_rank():05d}.pt"), weights_only=False)

    @staticmethod
    def saved_rank_states(path: str) -> list[dict]:
        files = sorted(os.listdir(os.path.join(path, RANKS_DIR)))
        return [torch.load(os.path.join(path, RANKS_DIR, f), weights_only=False) for f in files]
