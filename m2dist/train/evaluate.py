"""Evaluation on the eval split: GPT validation loss and perplexity, BERT MLM loss and accuracy, ViT top-1.

Statistics are kept per sample id and merged across ranks, counting each sample once: the number is then the same
for any data-parallel layout, and for a single-process evaluation of the exported model. Under context parallelism
a rank holds a slice of each sample: a sample's statistics are the sum of its slices' (one per CP rank).
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from m2dist.data.contract import SAMPLE_IDS
from m2dist.train import tasks


@torch.no_grad()
def evaluate(model, model_for_loss, loader, task: str, steps: int, dtype, device, group=None,
             context_rank: int = 0) -> dict:
    """``steps`` micro-batches per rank (0: the whole split). ``model`` is called; ``model_for_loss`` is the module
    whose logits' layout picks the loss functions (``m2dist.parallel.loss_functions``). ``context_rank``: which
    slice of each sample this rank holds (its statistics are added to the other slices')."""
    was_training = model.training
    model.eval()
    stats: dict[tuple[int, int], tuple[float, int, int]] = {}  # (sample id, context rank) -> statistics
    batches = loader if steps <= 0 else itertools.islice(loader, steps)
    for batch in batches:
        logits, labels = tasks.forward(model, batch, task, dtype, device)
        for sid, s in zip(batch[SAMPLE_IDS].tolist(), tasks.per_sample_stats(model_for_loss, logits, labels)):
            stats[(int(sid), context_rank)] = s
    if was_training:
        model.train()
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, stats, group=group)
        for other in gathered:
            stats.update(other)
    per_sample: dict[int, tuple[float, int, int]] = {}
    for (sid, _), s in sorted(stats.items()):  # a fixed summation order, whatever the layout
        prev = per_sample.get(sid, (0.0, 0, 0))
        per_sample[sid] = s if sid not in per_sample else (prev[0] + s[0], prev[1] + s[1], prev[2] + s[2])
    ordered = [per_sample[k] for k in sorted(per_sample)]
    loss_sum = sum(s[0] for s in ordered)
    count = sum(s[1] for s in ordered)
    correct = sum(s[2] for s in ordered)
    out = tasks.summarize(task, loss_sum, count, correct)
    out["eval_samples"] = len(per_sample)
    return out
