"""Evaluation on the eval split: GPT validation loss and perplexity, BERT MLM loss and accuracy, ViT top-1.

Statistics are kept per sample id and merged across ranks, counting each sample once: the number is then the same
for any data-parallel layout, and for a single-process evaluation of the exported model.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from m2dist.data.contract import SAMPLE_IDS
from m2dist.train import tasks


@torch.no_grad()
def evaluate(model, model_for_loss, loader, task: str, steps: int, dtype, device, group=None) -> dict:
    """``steps`` micro-batches per rank (0: the whole split). ``model`` is called; ``model_for_loss`` is the module
    whose logits' layout picks the loss functions (``m2dist.parallel.loss_functions``)."""
    was_training = model.training
    model.eval()
    stats: dict[int, tuple[float, int, int]] = {}
    batches = loader if steps <= 0 else itertools.islice(loader, steps)
    for batch in batches:
        logits, labels = tasks.forward(model, batch, task, dtype, device)
        for sid, s in zip(batch[SAMPLE_IDS].tolist(), tasks.per_sample_stats(model_for_loss, logits, labels)):
            stats[int(sid)] = s
    if was_training:
        model.train()
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, stats, group=group)
        for other in gathered:
            stats.update(other)
    ordered = [stats[k] for k in sorted(stats)]  # a fixed summation order, whatever the layout
    loss_sum = sum(s[0] for s in ordered)
    count = sum(s[1] for s in ordered)
    correct = sum(s[2] for s in ordered)
    out = tasks.summarize(task, loss_sum, count, correct)
    out["eval_samples"] = len(stats)
    return out
