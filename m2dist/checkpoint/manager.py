"""Checkpoint manager: save (sharded, atomic, checksummed), find the checkpoint to resume from, load (also into a
different data-/tensor-parallel layout), keep the last K.

Model and optimizer go through DeepSpeed's own sharded format (one model file per tensor rank, ZeRO optimizer shards
per data x tensor rank): it restores bit-exactly for every ZeRO stage (stack-facts §2). Everything DeepSpeed does
not own -- the step, consumed samples, each rank's data-loader and RNG state, the resolved config -- is written
next to it. Resharding goes through DeepSpeed's universal (per-parameter, layout-free) form, converted on demand.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import json
import os
import re
import shutil
import threading
import time
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
# The one place for temporary conversions made while resuming at another layout (DeepSpeed's universal form, a
# ZeRO-0 checkpoint cut for another tensor-parallel size). Each is removed as soon as every rank has loaded it, and
# whatever a dead job left here is removed when the next job starts.
CONVERSIONS_DIR = ".conversions"
LEGACY_CONVERSION_DIRS = (".universal",)  # where earlier versions kept the universal copies (never pruned)


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
    # How the model/optimizer are read: "native" (same layout, or ZeRO-0 at another data-parallel size: its optimizer
    # is not partitioned), "universal" (DeepSpeed's per-parameter conversion: another data-/tensor-parallel size or
    # ZeRO stage, ZeRO >= 1 on both sides) or "zero0_tp" (ZeRO-0 at another tensor-parallel size: the model and
    # optimizer files are merged over the tensor ranks and cut again, see reshard_zero0).
    mode: str
    reasons: list = field(default_factory=list)


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


def _to_host(obj, memo=None):
    """A copy of ``obj`` with every tensor copied to host memory (the same tensor object once: tied weights stay
    shared); containers rebuilt, other values deep-copied. The copy is what the background writer saves, so training
    may change the originals right after."""
    memo = {} if memo is None else memo
    if torch.is_tensor(obj):
        if id(obj) not in memo:
            memo[id(obj)] = obj.detach().to("cpu", copy=True)
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = {k: _to_host(v, memo) for k, v in obj.items()}
        return collections.OrderedDict(out) if isinstance(obj, collections.OrderedDict) else out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_host(v, memo) for v in obj)
    return copy.deepcopy(obj)


class _HostCopyCheckpointEngine:
    """Stands in for DeepSpeed's checkpoint engine during an asynchronous save: ``save`` keeps a host copy of the
    state and its path instead of writing; everything else is the real engine's."""

    def __init__(self, inner):
        self.inner = inner
        self.files: list[tuple[str, Any]] = []

    def save(self, state_dict, path: str):
        self.files.append((path, _to_host(state_dict)))

    def preserves_storage_sharing(self):
        # DeepSpeed would clone each tensor (on its device) so that torch.save does not write whole flat buffers;
        # the host copy already makes each tensor its own storage.
        return False

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


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
        capture = _HostCopyCheckpointEngine(engine.checkpoint_engine)
        engine.checkpoint_engine = capture
        try:
            engine.save_checkpoint(self.root, tag=tmp_tag, client_state=client_state, save_latest=False)
        finally:
            engine.checkpoint_engine = capture.inner
        rank_state = _to_host(rank_state)
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
            _write_atomic(os.path.join(tmp, TRAINER_STATE), json.dumps(trainer_state, indent=1))
            _write_atomic(os.path.join(tmp, CONFIG_FILE), config_yaml)

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
            _fsync_dir(self.root)
            _write_atomic(os.path.join(self.root, LATEST), name + "\n")  # written last
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
        if saved.zero_stage == 0 and now.zero_stage == 0:
            if saved.tensor_parallel == now.tensor_parallel:
                # ZeRO-0 keeps the whole optimizer state in the per-tensor-rank model file: any data-parallel size
                # reads it.
                return LoadPlan(path, state, "native", reasons)
            return LoadPlan(path, state, "zero0_tp", reasons)
        if saved.zero_stage == 0 or now.zero_stage == 0:
            raise RuntimeError(
                f"cannot reshard {path} ({', '.join(reasons)}): a change between ZeRO-0 and ZeRO >= 1 is not "
                f"supported (layout changes are, at any one stage); resume with "
                f"deepspeed.zero_stage={saved.zero_stage}"
            )
        return LoadPlan(path, state, "universal", reasons)

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
        group_names = _optimizer_group_names(engine) if plan.mode == "zero0_tp" else None
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
        hyper = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in engine.optimizer.param_groups]
        try:
            with _deepspeed_tensor_group(self.groups if plan.mode == "universal" else None):
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
            _restore_group_hyperparameters(engine, hyper)
            _unshare_step_counters(engine)
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


@contextlib.contextmanager
def _deepspeed_tensor_group(groups):
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


def _unshare_step_counters(engine) -> None:
    """DeepSpeed 0.19.8's ZeRO-3 universal load (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``) stores one
    and the same ``step`` tensor in the state of every sub-group. torch's AdamW increments ``state['step']`` in place
    once per group, so with G param groups (m2dist has 3: decay, no_decay, filter) the shared counter advanced G
    times per optimizer step: from the first step after the resume Adam's bias correction used the wrong step, and
    the losses drifted ~1e-4 relative from an uninterrupted run. Give each state its own counter again (a native
    load and ZeRO-1/2's universal load already do)."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    seen = set()
    for state in base.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(state["step"]))


def _optimizer_group_names(engine) -> list[dict]:
    """The live optimizer's groups as ``[{"name": group name, "params": [parameter names in order]}]``."""
    names = {id(p): n for n, p in engine.module.named_parameters()}
    return [{"name": g.get("name"), "params": [names[id(p)] for p in g["params"]]}
            for g in engine.optimizer.param_groups]


def reshard_zero0(path: str, out: str, tensor_parallel: int, data_parallel: int, group_names: list[dict]) -> None:
    """ZeRO-0 checkpoint ``path`` (any tensor-parallel size) -> DeepSpeed's ZeRO-0 files for ``tensor_parallel``
    tensor ranks in ``out``, loadable natively.

    At ZeRO-0 each tensor rank's ``mp_rank_XX_model_states.pt`` holds its slice of the model and the torch AdamW
    state of those slices (moments shaped like their parameters; ``step`` per parameter). Parameters and moments
    are merged over the saved tensor ranks and cut for the new ones with m2dist.parallel.sharding's plan (exact
    concatenation and slicing, strided layouts included). The optimizer state is keyed by position: a saved group's
    positions are its parameters in the saved model's parameter order (``trainer_state.json``), restricted to the
    names the live optimizer puts in that group (group membership depends on the parameter, not the layout); the
    new files use the live optimizer's order. Shapes are checked against the saved model slices."""
    import glob

    from m2dist.checkpoint.export import _load_config_from_checkpoint
    from m2dist.parallel.sharding import REPLICATED, gather_tensor, shard_plan, shard_state_dict, shard_tensor

    files = sorted(glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")))
    shards = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    order = list(read_trainer_state(path)["parameters"])
    plan = shard_plan(_load_config_from_checkpoint(path).model)
    membership = {g["name"]: set(g["params"]) for g in group_names}

    per_rank = []  # per saved tensor rank: {parameter name: its AdamW state}
    for f, shard in zip(files, shards):
        by_name = {}
        for group in shard["optimizer"]["param_groups"]:
            if group.get("name") not in membership:
                raise RuntimeError(f"{f}: optimizer group {group.get('name')!r} is not one of the live optimizer's")
            names = [n for n in order if n in membership[group["name"]]]
            if len(names) != len(group["params"]):
                raise RuntimeError(f"{f}: optimizer group {group['name']!r} has {len(group['params'])} parameters, "
                                   f"the model {len(names)}")
            for name, index in zip(names, group["params"]):
                st = shard["optimizer"]["state"].get(index)
                if st is None:
                    continue
                for key, value in st.items():
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape != shard["module"][name].shape:
                        raise RuntimeError(f"{f}: optimizer state {key} of {name} is {tuple(value.shape)}, the "
                                           f"parameter {tuple(shard['module'][name].shape)}")
                by_name[name] = st
        per_rank.append(by_name)

    def merge(name, key):
        values = [r[name][key] for r in per_rank]
        if not torch.is_tensor(values[0]) or values[0].dim() == 0:
            return values[0]
        return gather_tensor(values, plan.get(name, REPLICATED))

    full_module = {k: gather_tensor([s["module"][k] for s in shards], plan.get(k, REPLICATED))
                   for k in shards[0]["module"]}
    full_state = {n: {k: merge(n, k) for k in per_rank[0][n]} for n in per_rank[0]}

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    log.info("cutting ZeRO-0 checkpoint %s (tensor parallel %d) for tensor parallel %d in %s", path, len(shards),
             tensor_parallel, out)
    for rank in range(tensor_parallel):
        state, groups, index = {}, [], 0
        for saved_group, live in zip(shards[0]["optimizer"]["param_groups"], group_names):
            ids = []
            for name in live["params"]:
                if name in full_state:
                    state[index] = {k: (shard_tensor(v, plan.get(name, REPLICATED), rank, tensor_parallel)
                                        if torch.is_tensor(v) and v.dim() > 0 else
                                        (v.clone() if torch.is_tensor(v) else v))
                                    for k, v in full_state[name].items()}
                ids.append(index)
                index += 1
            groups.append({**saved_group, "params": ids})
        new = dict(shards[0])
        new["module"] = shard_state_dict(full_module, rank, tensor_parallel, plan)
        new["optimizer"] = {"state": state, "param_groups": groups}
        new["mp_world_size"], new["dp_world_size"] = tensor_parallel, data_parallel
        torch.save(new, os.path.join(tmp, f"mp_rank_{rank:02d}_model_states.pt"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def resolve_checkpoint(path: str) -> str:
    """``path`` itself for a checkpoint directory (``.../step_<N>``); for a checkpoint root (``checkpoint.dir``,
    holding ``latest``), the checkpoint ``latest`` names."""
    latest = os.path.join(path, LATEST)
    if not os.path.exists(os.path.join(path, manifest.MANIFEST)) and os.path.isfile(latest):
        with open(latest) as f:
            return os.path.join(path, f.read().strip())
    return path


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
