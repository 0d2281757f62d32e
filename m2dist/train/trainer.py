"""The training loop, assembled from the components of this package.

    init_distributed -> groups -> find checkpoint -> DeepSpeed engine -> loaders -> restore
    loop: gradient-accumulation micro-steps -> metrics -> eval -> checkpoint -> preemption check
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

from m2dist.config import Config, config_to_yaml
from m2dist.train import PREEMPTED_MARKER, REQUEUE_EXIT_CODE
from m2dist.train.signals import INTERRUPT_EXIT_CODE
from m2dist.utils.logging import get_logger

log = get_logger(__name__)

# Test hook for "kill -9 the whole job": after this step (and its checkpoint) every rank stops making progress and
# rank 0 writes <run_dir>/PAUSED, so a test can SIGKILL the job at a known point. Unused in production.
PAUSE_ENV = "M2DIST_TEST_PAUSE_AFTER_STEP"


class Trainer:
    def __init__(self, cfg: Config):
        from launch.distributed import init_distributed
        from m2dist.checkpoint import CheckpointManager
        from m2dist.checkpoint.layout import Layout
        from m2dist.data.contract import task_of
        from m2dist.parallel import init_groups
        from m2dist.train.ds_config import gradient_accumulation_steps
        from m2dist.train.engine import build_engine
        from m2dist.train.metrics import MetricsLogger, device_peak_flops
        from m2dist.train.precision import input_dtype
        from m2dist.train.rng_state import seed_all
        from m2dist.train.signals import PreemptionHandler
        from m2dist.train.vocab_size import resolve_vocab_size

        self.cfg = cfg
        t = cfg.trainer
        self.info = init_distributed(t.device)
        self.rank = self.info.rank
        self.groups = init_groups(cfg.parallel.tensor, seed=t.seed, context_size=cfg.parallel.context)
        # Control-plane collectives (preemption flag, sample ids) run on CPU tensors: with NCCL they need gloo.
        self.cpu_group = dist.new_group(backend="gloo") if self.info.backend != "gloo" else None
        resolve_vocab_size(cfg)
        self.task = task_of(cfg)
        self.device = torch.device(self.info.device)
        self.dtype = input_dtype(cfg, self.info.device)
        self.gas = gradient_accumulation_steps(cfg, self.groups.data_size)
        self.config_yaml = config_to_yaml(cfg)

        if self.rank == 0:
            os.makedirs(t.run_dir, exist_ok=True)
            # A requeued job starts here: the marker of the previous attempt has been read by the launcher.
            marker = os.path.join(t.run_dir, PREEMPTED_MARKER)
            if os.path.exists(marker):
                os.remove(marker)
            with open(os.path.join(t.run_dir, "config.yaml"), "w") as f:
                f.write(self.config_yaml)

        layout = Layout(self.info.world_size, self.groups.data_context_size, self.groups.tensor_size,
                        cfg.deepspeed.zero_stage, t.global_batch_size, t.micro_batch_size, self.groups.context_size)
        if self.rank == 0:
            g = self.groups
            log.info("layout: world %d = tensor %d x context %d x data %d (rank order TP, CP, DP), ZeRO-%d; global "
                     "batch %d = micro %d x accumulation %d x data %d", self.info.world_size, g.tensor_size,
                     g.context_size, g.data_size, cfg.deepspeed.zero_stage, t.global_batch_size, t.micro_batch_size,
                     self.gas, g.data_size)
        self.ckpt = CheckpointManager(cfg.checkpoint, layout, self.groups)
        resume_path = self.ckpt.find_resume(t.resume)
        self.plan = self.ckpt.plan_load(resume_path) if resume_path else None

        self.engine, self.model, self.ds_config = build_engine(
            cfg, self.groups, self.info.device, load_universal=bool(self.plan and self.plan.mode == "universal"))
        # Per data-parallel rank streams (dropout etc.), identical within a tensor-parallel group; distinct per
        # context-parallel rank (its tokens are other positions of the same samples).
        seed_all(t.seed + 1000 * self.groups.data_context_rank)

        from m2dist.models.build import sequence_length
        from m2dist.train.split_loader import build_split_loader

        self.train_loader = build_split_loader(cfg, cfg.data.train_split, self.groups, training=True)
        # Tokens one sample feeds the model: its sequence length, or its number of patches for images.
        self.tokens_per_sample = sequence_length(cfg.model)
        from m2dist.checkpoint import Resumable

        self.state = Resumable()
        if self.plan is not None:
            self._restore()

        from m2dist.models import flops_per_token

        peak = device_peak_flops(self.info.device)
        fpt = flops_per_token(cfg.model, self.tokens_per_sample)
        # Training FLOPs per second achievable by the job: 3x forward, over every device's peak.
        self.mfu_denominator = None if peak is None else peak * self.info.world_size / (3 * fpt)
        self.metrics = MetricsLogger(t.run_dir, self.rank == 0, cfg.logging.tensorboard, t.max_steps)
        self.preemption = PreemptionHandler()
        if cfg.logging.sample_ids and self.rank == 0:  # as metrics.jsonl: each step once, for the run that counts
            from m2dist.train.metrics import drop_records_after

            drop_records_after(os.path.join(t.run_dir, "sample_ids.jsonl"), self.state.step)
        self._sample_log = open(os.path.join(t.run_dir, "sample_ids.jsonl"), "a", buffering=1) \
            if (cfg.logging.sample_ids and self.rank == 0) else None

    # ---------------------------------------------------------------- state
    def _rank_state(self) -> dict:
        from m2dist.train.rng_state import get_rng_state

        return {"rng": get_rng_state(), "data": self.train_loader.state_dict(),
                "data_rank": self.groups.data_rank, "tensor_rank": self.groups.tensor_rank}

    def _restore(self) -> None:
        from m2dist.checkpoint import Resumable
        from m2dist.train.rng_state import set_rng_state

        rank_state = self.ckpt.load(self.engine, self.plan)
        self.state = Resumable(**self.plan.trainer_state["resumable"])
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
            self.train_loader.load_state_dict(rank_state["data"])
        else:
            # Different layout: the reader's position is global (samples consumed by the whole job at a fixed global
            # batch), so the state of data rank 0 describes it for any data-parallel size. RNG streams are re-seeded.
            saved = self.ckpt.saved_rank_states(self.plan.path)
            self.train_loader.load_state_dict(next(s["data"] for s in saved if s["data_rank"] == 0))
            from m2dist.train.rng_state import seed_all

            seed_all(self.cfg.trainer.seed + 1000 * self.groups.data_context_rank + self.state.step)
        if self.rank == 0:
            how = f" (resharded: {', '.join(self.plan.reasons)})" if self.plan.reasons else ""
            log.info("resumed from %s at step %d%s", self.plan.path, self.state.step, how)

    def save(self, blocking: bool = True) -> str:
        from m2dist.parallel.universal_checkpoint import universal_checkpoint_info

        # blocking=False: with checkpoint.async_save the files are written in the background (CheckpointManager.save).
        path = self.ckpt.save(self.engine, self.state, self._rank_state(), self.config_yaml, model=self.model,
                              universal_info=universal_checkpoint_info(self.model),
                              blocking=blocking)
        if self.rank == 0:
            log.info("saved checkpoint %s" if blocking or not self.ckpt.async_save else
                     "checkpoint %s: state copied, being written in the background", path)
        return path

    # ---------------------------------------------------------------- eval
    def evaluate(self) -> dict:
        from m2dist.train.evaluate import evaluate
        from m2dist.train.split_loader import build_split_loader

        loader = build_split_loader(self.cfg, self.cfg.data.eval_split, self.groups, training=False)
        result = evaluate(self.engine, self.model, loader, self.task, self.cfg.trainer.eval_steps, self.dtype,
                          self.device, group=self.cpu_group, context_rank=self.groups.context_rank)
        self.metrics.log({"step": self.state.step, **result})
        return result

    # ---------------------------------------------------------------- loop
    def _next_batch(self):
        try:
            return next(self._it)
        except StopIteration:  # end of an epoch: the reader starts the next one
            self._it = iter(self.train_loader)
            return next(self._it)

    def _log_sample_ids(self, ids: list) -> None:
        # Only the first rank of each tensor x context group: its peers read the same samples.
        mine = ids if self.groups.tensor_rank == 0 and self.groups.context_rank == 0 else []
        if dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, mine, group=self.cpu_group)
            mine = [i for p in parts for i in p]
        if self._sample_log is not None:
            self._sample_log.write(json.dumps({"step": self.state.step, "ids": mine}) + "\n")

    def train_step(self) -> dict:
        from m2dist.data.contract import IGNORE_INDEX, LABELS, SAMPLE_IDS
        from m2dist.train.tasks import forward, to_device, training_loss_sum

        lr = self.engine.get_lr()[0]  # the rate this step uses (the schedule advances inside engine.step)
        grad_norm = None
        # The loss is the mean over every target of the global batch (Megatron's per-token loss), not a mean of
        # micro-batch means: with MLM the number of masked targets differs between micro-batches, and only the
        # global normalisation makes the step independent of how the batch is split over ranks and micro-steps.
        # So the step's micro-batches are read first and their targets counted over the data-parallel group -- over
        # DP x CP with context parallelism, where each rank's labels are its slice of the sequence.
        batches = [self._next_batch() for _ in range(self.gas)]
        # Counted on the host and moved without a stream sync (torch.tensor(..., device=cuda) would wait for the GPU).
        count = to_device(torch.tensor([float(sum(int((b[LABELS] != IGNORE_INDEX).sum()) for b in batches))]),
                          self.device)
        dp_group = self.groups.data_context_group if self.groups.uses_megatron else None
        if dist.is_initialized() and dist.get_world_size(dp_group) > 1:
            dist.all_reduce(count, group=dp_group)
        count = count.clamp(min=1)
        # DeepSpeed divides each micro-step's loss by the accumulation steps and averages gradients over its data
        # ranks (DP x CP); scaling by both turns that back into a sum over the global batch's targets (each CP rank
        # holding its tokens' share), divided by their count.
        scale = self.gas * self.groups.data_context_size
        loss_sum = torch.zeros((), device=self.device)
        ids = []
        for micro, batch in enumerate(batches):
            logits, labels = forward(self.engine, batch, self.task, self.dtype, self.device)
            local = training_loss_sum(self.model, logits, labels)
            self.engine.backward(local * (scale / count[0]))
            if micro == self.gas - 1 and self._own_grad_norm:
                grad_norm = self._fp32_grad_norm()
            self.engine.step()  # DeepSpeed steps the optimizer and the schedule at the accumulation boundary
            loss_sum = loss_sum + local.detach().float()
            if SAMPLE_IDS in batch:
                ids.extend(int(i) for i in batch[SAMPLE_IDS])
        self.state.step += 1
        self.state.consumed_samples += self.cfg.trainer.global_batch_size
        self.state.tokens += self.cfg.trainer.global_batch_size * self.tokens_per_sample
        if self.cfg.logging.sample_ids:
            self._log_sample_ids(ids)
        if dist.is_initialized() and dist.get_world_size(dp_group) > 1:
            dist.all_reduce(loss_sum, group=dp_group)
        # Loss and grad norm stay on the device: reading them syncs the host with the GPU, so that happens only for
        # the steps that are logged (``finish_record``), and the host queues the next step while this one runs.
        return {
            "step": self.state.step,
            "loss": loss_sum / count[0],
            "lr": lr,
            "grad_norm": grad_norm if self._own_grad_norm else self.engine.get_global_grad_norm(),
            "consumed_samples": self.state.consumed_samples,
        }

    def finish_record(self, record: dict, steps: int, since: float) -> dict:
        """A step's record as logged: device values read (a host sync), speed over the ``steps`` steps since the
        ``since`` clock reading (the mean step time of the interval: steps between syncs cannot be told apart)."""
        from m2dist.train.metrics import memory_gib

        record["loss"] = float(record["loss"])
        norm = record["grad_norm"]
        record["grad_norm"] = None if norm is None else float(norm.item() if torch.is_tensor(norm) else norm)
        dt = (time.perf_counter() - since) / max(steps, 1)
        tokens_per_s = self.cfg.trainer.global_batch_size * self.tokens_per_sample / dt
        record.update(tokens_per_s=tokens_per_s, step_time_s=dt, mem_gib=memory_gib(self.info.device),
                      mfu=None if self.mfu_denominator is None else tokens_per_s / self.mfu_denominator)
        return record

    @property
    def _own_grad_norm(self) -> bool:
        # DeepSpeed reports the norm from its ZeRO and bf16 optimizers, not from plain fp32 ZeRO-0 (it clips there but
        # drops the norm), so we compute it then: after the boundary backward has all-reduced the gradients.
        return self.cfg.deepspeed.zero_stage == 0 and self.dtype == torch.float32

    def _fp32_grad_norm(self) -> torch.Tensor:
        from deepspeed.runtime.utils import get_flattened_grad_norm

        # The norm is summed over the tensor group: count a replicated parameter on tensor rank 0 only, a sharded
        # one on every rank (its slices are disjoint).
        tp_rank0 = self.groups.tensor_rank == 0
        params = [p for p in self.model.parameters()
                  if p.grad is not None and (tp_rank0 or getattr(p, "tensor_model_parallel", False))]
        return get_flattened_grad_norm(params, mpu=self.engine.mpu)

    def fit(self) -> int:
        t = self.cfg.trainer
        every_log, every_eval, every_ckpt = self.cfg.logging.every, t.eval_every, self.cfg.checkpoint.every
        pause_at = int(os.environ.get(PAUSE_ENV, "0"))
        self._it = iter(self.train_loader)
        self.engine.train()
        self.metrics.start(self.state.step)
        last_saved = self.state.step if self.plan is not None else -1
        last_eval = -1
        since, steps_since = time.perf_counter(), 0  # the speed interval: reset after every host sync
        while self.state.step < t.max_steps:
            self.preemption.current_step = self.state.step + 1
            record = self.train_step()
            step = self.state.step
            steps_since += 1
            if every_log > 0 and (step % every_log == 0 or step == t.max_steps):
                self.metrics.log(self.finish_record(record, steps_since, since))
                since, steps_since = time.perf_counter(), 0
            if every_eval > 0 and step % every_eval == 0:
                self.evaluate()
                last_eval = step
            if every_ckpt > 0 and step % every_ckpt == 0:
                self.save(blocking=False)
                last_saved = step
            if (every_eval > 0 and step % every_eval == 0) or (every_ckpt > 0 and step % every_ckpt == 0):
                # Evaluation and saving are not training time: the next interval starts after them.
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                since, steps_since = time.perf_counter(), 0
            if self.preemption.should_stop(self.cpu_group):
                sig = self.preemption.received
                if self.preemption.interrupted:  # Ctrl-C: save where we are and stop; no requeue
                    if last_saved != step:
                        self.save()
                    self.ckpt.wait()  # an asynchronous save of this step is committed before we say "saved"
                    if self.rank == 0:
                        log.warning("interrupted (Ctrl-C during step %s): saved after step %d; exiting with code %d",
                                    self.preemption.signal_step, step, INTERRUPT_EXIT_CODE)
                    return INTERRUPT_EXIT_CODE
                if self.rank == 0:
                    log.warning("preemption signal %s received during step %s; saving after step %d and exiting "
                                "with code %d for a requeue", sig, self.preemption.signal_step, step, REQUEUE_EXIT_CODE)
                if last_saved != step:
                    self.save()
                self.ckpt.wait()  # the marker says the checkpoint is committed: an asynchronous one must be
                if self.rank == 0:
                    with open(os.path.join(t.run_dir, PREEMPTED_MARKER), "w") as f:
                        # signal_step: the step in progress when this rank got the signal (None: a peer got it).
                        f.write(json.dumps({"step": step, "signal": int(sig) if sig else None,
                                            "signal_step": self.preemption.signal_step}) + "\n")
                return REQUEUE_EXIT_CODE
            if pause_at and step == pause_at:
                self._pause()
        if every_eval > 0 and last_eval != self.state.step:
            self.evaluate()
        if last_saved != self.state.step:
            self.save()
        self.ckpt.wait()  # an asynchronous save still in flight is committed before the job ends
        return 0

    def _pause(self) -> None:
        self.ckpt.wait()  # "after this step and its checkpoint": also an asynchronous one
        if dist.is_initialized():
            dist.barrier()
        if self.rank == 0:
            open(os.path.join(self.cfg.trainer.run_dir, "PAUSED"), "w").close()
        while True:
            time.sleep(1)

    def close(self) -> None:
        self.metrics.close()
        if self._sample_log is not None:
            self._sample_log.close()
        self.preemption.restore()


def train(cfg: Config) -> int:
    """Run training; returns the process exit code (0, or REQUEUE_EXIT_CODE after a preemption)."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        from launch.distributed import destroy_distributed
        from m2dist.parallel import destroy_groups

        destroy_groups()
        destroy_distributed()
