"""The typed configuration tree of an m2dist run.

Every YAML file under ``configs/`` resolves onto :class:`Config`. Key names here are a public
contract: scripts, sweeps and users override them on the command line (``trainer.max_steps=100``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from m2dist.config.model import ModelConfig, Task


@dataclass
class DataConfig:
    # Prepared MDS directory (``m2dist prep`` output); splits live in sub-folders.
    path: str = ""
    # Sentencepiece model; the model's vocabulary size follows it unless model.vocab_size is set.
    tokenizer: str = ""
    # What the samples are read as: next-token LM, masked LM, or labelled images. Left unset in a config file, it
    # is the task of model.arch (m2dist.config.model.TASK_OF_ARCH); set, it must be that task.
    kind: Task = "causal_lm"
    train_split: str = "train"
    eval_split: str = "val"
    # MLM masking rate (the M2-BERT recipe trains at 30%).
    mlm_probability: float = 0.3
    shuffle: bool = True
    shuffle_seed: int = 9176
    num_workers: int = 0
    # Optional streaming cache/remote for datasets that live on object stores.
    remote: Optional[str] = None


@dataclass
class OptimizerConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 6.0e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1.0e-8
    # Implicit long-conv filter parameters get their own group (the public code drops it silently).
    filter_lr: Optional[float] = None
    filter_weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    # The floor the decay reaches at trainer.max_steps, as a fraction of optimizer.lr.
    min_lr_ratio: float = 0.1


@dataclass
class ParallelConfig:
    # Tensor-parallel size.
    tensor: int = 1
    # Context-parallel size (M2 models): each rank holds max_seq_len / context tokens of the same samples. The
    # data-parallel size is world_size / (tensor x context); rank order: tensor innermost, then context, then data
    # (docs/context_parallel.md).
    context: int = 1


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    # "auto": bf16_autocast on GPU, fp32 on CPU. bf16_autocast: fp32 weights and optimizer, bf16 compute under
    # torch.autocast. bf16: DeepSpeed's bf16 mode (bf16 weights and activations, fp32 master weights).
    precision: Literal["auto", "fp32", "bf16", "bf16_autocast"] = "auto"
    # A user's own ds_config JSON; when set it is used as given (batch sizes are still checked).
    config_file: Optional[str] = None
    # ZeRO-1/2/3 (the generated ds_config; a config_file says its own): copy each gradient into DeepSpeed's reduction
    # bucket from its backward hook, while the backward still runs, and reduce buckets as they fill, instead of walking
    # every parameter after the backward. Megatron's --overlap-grad-reduce. On by default, for the reduction it hides
    # behind the backward on several GPUs (not measured yet); on one H200 it measured +1.8% (ZeRO-1) and +2.5% (ZeRO-2)
    # tokens/s for M2-GPT-360M @2048 and -5.3% for BERT-base @128, all within the spread between calls, with the same
    # peak memory (benchmarks/NOTES.md, attempt 24).
    overlap_comm: bool = True


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"
    # Save every N optimizer steps (0: only at the end).
    every: int = 0
    keep_last: int = 3
    # Scheduled saves copy the state to host memory and write it in a background thread while training goes on;
    # committed (manifest, rename, `latest`) once every rank's files are complete. Final and preemption saves
    # always finish before the job exits.
    async_save: bool = False


@dataclass
class LoggingConfig:
    every: int = 10
    tensorboard: bool = True
    level: Literal["debug", "info", "warning", "error"] = "info"
    # Write the global batch's sample ids per step to <run_dir>/sample_ids.jsonl (proves no sample is repeated or
    # skipped across resumes; costs a gather per step).
    sample_ids: bool = False


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    seed: int = 1234
    # Metrics, TensorBoard events and logs.
    run_dir: str = "runs/default"
    # "auto": newest complete checkpoint in checkpoint.dir; "none": start fresh; or a path.
    resume: str = "auto"
    global_batch_size: int = 8
    micro_batch_size: int = 4
    grad_clip: float = 1.0
    eval_every: int = 0
    # Micro-batches per rank per evaluation; 0: the whole eval split.
    eval_steps: int = 10
    activation_checkpointing: bool = False
    compile: bool = False
    # Replay each layer's forward and backward as CUDA graphs (m2dist/train/layer_graphs.py): one launch per layer
    # instead of dozens, for steps bound by kernel launches (M2 at short lengths). "auto": on for M2 models when
    # training on a CUDA device and no other setting clashes with it (m2dist.config.validate.graph_clashes); true:
    # on for any model, and a clash or a missing GPU is an error.
    cuda_graphs: Union[bool, Literal["auto"]] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
