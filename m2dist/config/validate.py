"""Ranges and choices of config values, checked when a config loads (types are checked by the loader).

A value out of range fails here in one line, naming the key, where it came from and what is allowed, instead of
deep inside DeepSpeed or the first training step.
"""

from __future__ import annotations

from typing import Callable

from m2dist.config.model import TASK_OF_ARCH
from m2dist.config.schema import Config


def source_of(dotted: str, sources: dict[str, str]) -> str:
    """Where a dotted key was set: a file, the command line, or (never set) the defaults."""
    return sources.get(dotted, "the config" if not sources else "the defaults")


def _get(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _at_least(low):
    return (lambda v: v >= low), f"at least {low}"


def _positive():
    return (lambda v: v > 0), "positive"


def _between(low, high, *, high_open=False, low_open=False):
    def ok(v):
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return ok, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _one_of(*choices):
    # Exact type as well: YAML's `true` is not stage 1.
    return (lambda v: type(v) is type(choices[0]) and v in choices), "one of " + ", ".join(map(str, choices))


RULES: dict[str, tuple[Callable, str]] = {
    "deepspeed.zero_stage": _one_of(0, 1, 2, 3),
    "parallel.tensor": _at_least(1),
    "parallel.context": _at_least(1),
    "trainer.max_steps": _at_least(0),
    "trainer.global_batch_size": _at_least(1),
    "trainer.micro_batch_size": _at_least(1),
    "trainer.grad_clip": _at_least(0.0),
    "trainer.eval_every": _at_least(0),
    "trainer.eval_steps": _at_least(0),
    "optimizer.lr": _positive(),
    "optimizer.weight_decay": _at_least(0.0),
    "optimizer.eps": _positive(),
    "optimizer.filter_weight_decay": _at_least(0.0),
    "schedule.warmup_steps": _at_least(0),
    "schedule.min_lr_ratio": _between(0.0, 1.0),
    "data.mlm_probability": _between(0.0, 1.0, low_open=True, high_open=True),
    "data.num_workers": _at_least(0),
    "checkpoint.every": _at_least(0),
    "checkpoint.keep_last": _at_least(0),
    "logging.every": _at_least(0),
    "model.vocab_size": _at_least(0),
    "model.max_seq_len": _at_least(1),
    "model.hidden_size": _at_least(1),
    "model.num_layers": _at_least(1),
    "model.intermediate_size": _at_least(1),
    "model.nblocks": _at_least(1),
    "model.num_heads": _at_least(1),
    "model.image_size": _at_least(1),
    "model.patch_size": _at_least(1),
    "model.num_classes": _at_least(1),
    "model.dropout": _between(0.0, 1.0, high_open=True),
}


def problems(cfg: Config, sources: dict[str, str]) -> list[str]:
    """One line per value out of range, in RULES order (empty when all are fine)."""
    out = []

    def bad(key: str, value, allowed: str) -> None:
        out.append(f"config key '{key}' (from {source_of(key, sources)}) must be {allowed}, got {value!r}")

    for key, (ok, allowed) in RULES.items():
        value = _get(cfg, key)
        if not ok(value):
            bad(key, value, allowed)
    if cfg.optimizer.filter_lr is not None and not cfg.optimizer.filter_lr > 0:
        bad("optimizer.filter_lr", cfg.optimizer.filter_lr, "positive or null")
    for i, beta in enumerate(cfg.optimizer.betas):
        if not 0.0 <= beta < 1.0:
            bad("optimizer.betas", list(cfg.optimizer.betas), f"two values in [0, 1) (betas[{i}] is not)")
            break
    t = cfg.trainer
    if t.micro_batch_size >= 1 and t.global_batch_size >= 1 and t.global_batch_size % t.micro_batch_size:
        bad("trainer.global_batch_size", t.global_batch_size,
            f"a multiple of trainer.micro_batch_size={t.micro_batch_size}")
    out.extend(_context_problems(cfg, sources))
    out.extend(_graph_problems(cfg, sources))
    arch, kind = cfg.model.arch, cfg.data.kind
    if kind != TASK_OF_ARCH[arch]:
        same_kind = ", ".join(a for a, task in TASK_OF_ARCH.items() if task == kind)
        out.append(f"config keys 'data.kind' (from {source_of('data.kind', sources)}) and 'model.arch' (from "
                   f"{source_of('model.arch', sources)}) disagree: data.kind={kind!r} but model.arch={arch!r} "
                   f"trains on {TASK_OF_ARCH[arch]!r} data (set data.kind={TASK_OF_ARCH[arch]}, or an arch that "
                   f"trains on {kind!r}: {same_kind})")
    return out


def graph_clashes(cfg: Config) -> list[tuple[str, str]]:
    """(key, why) of each setting that ``trainer.cuda_graphs`` cannot capture (m2dist/train/layer_graphs.py):
    with ``true`` each is an error at load, with ``auto`` any of them leaves the graphs off."""
    t, p = cfg.trainer, cfg.parallel
    clashes = [("trainer.activation_checkpointing", t.activation_checkpointing, "recomputes the forward outside "
                "the graph"),
               ("trainer.compile", t.compile, "failed in capture on the H200 (inductor's RNG offsets: benchmarks/NOTES.md, "
                "attempt 19)"),
               ("parallel.tensor", p.tensor > 1, "runs collectives inside each layer, not captured here yet"),
               ("parallel.context", p.context > 1, "runs collectives inside each layer, not captured here yet"),
               ("deepspeed.zero_stage", cfg.deepspeed.zero_stage == 3, "gathers each layer's parameters into new "
                "buffers at every forward"),
               ("trainer.device", t.device == "cpu", "is not a CUDA device")]
    return [(name, why) for name, clash, why in clashes if clash]


def _graph_problems(cfg: Config, sources: dict[str, str]) -> list[str]:
    if cfg.trainer.cuda_graphs is not True:
        return []
    key = f"trainer.cuda_graphs=true (from {source_of('trainer.cuda_graphs', sources)})"
    return [f"{key} does not work with {name}={_get(cfg, name)!r} (from {source_of(name, sources)}): it {why}; "
            f"set trainer.cuda_graphs=false or change {name}" for name, why in graph_clashes(cfg)]


def _context_problems(cfg: Config, sources: dict[str, str]) -> list[str]:
    """Context parallelism (parallel.context > 1) the model cannot run: one line each (issue 16's errors)."""
    cp, tp, m = cfg.parallel.context, cfg.parallel.tensor, cfg.model
    if cp <= 1 or tp < 1:
        return []
    key = f"parallel.context={cp} (from {source_of('parallel.context', sources)})"
    if not m.arch.startswith("m2_"):
        return [f"{key} needs an M2 model: model.arch={m.arch!r} is a Transformer baseline, whose attention has no "
                f"context-parallel form here (ring attention is not implemented); use parallel.context=1"]
    out = []
    if m.arch == "m2_vit":
        # The loader gives each rank a block of pixel rows: whole rows of patches, a consecutive block of the
        # row-major patch sequence.
        rows = m.image_size // m.patch_size
        if m.position_embeddings:
            out.append(f"{key} with model.arch='m2_vit' needs model.position_embeddings=false (from "
                       f"{source_of('model.position_embeddings', sources)}; the paper's M2-ViT has none, and the "
                       f"patch position table is not split across ranks)")
        if rows % cp:
            out.append(f"{key} does not divide the {rows} rows of patches (model.image_size={m.image_size} / "
                       f"model.patch_size={m.patch_size}): each rank holds a block of whole patch rows")
        elif rows * rows // cp < m.short_conv_size - 1:
            out.append(f"{key} leaves {rows * rows // cp} patches per rank, fewer than the short conv's halo of "
                       f"model.short_conv_size-1={m.short_conv_size - 1}")
    elif m.max_seq_len % cp:
        out.append(f"{key} does not divide the sequence length model.max_seq_len={m.max_seq_len} (from "
                   f"{source_of('model.max_seq_len', sources)}): each rank holds max_seq_len / parallel.context "
                   f"consecutive tokens")
    elif m.max_seq_len // cp < m.short_conv_size - 1:
        out.append(f"{key} leaves {m.max_seq_len // cp} tokens per rank (model.max_seq_len={m.max_seq_len}), fewer "
                   f"than the short conv's halo of model.short_conv_size-1={m.short_conv_size - 1}")
    if m.hidden_size % (tp * cp):
        out.append(f"{key} with parallel.tensor={tp} cannot split model.hidden_size={m.hidden_size} (from "
                   f"{source_of('model.hidden_size', sources)}): each rank convolves hidden_size / (tensor x "
                   f"context) channels, so tensor x context={tp * cp} must divide it")
    return out
