"""What a batch means for each model family: the training loss and the evaluation statistics.

Language models: ``labels`` are the targets of each position (the reader aligns them; ``IGNORE_INDEX`` = ignored),
so the loss is a plain token-mean cross-entropy. Images: one label per image. The batch keys and the task of each
arch are ``m2dist.data.contract``'s.

The cross-entropy and argmax follow how the model's logits are laid out (``m2dist.parallel.loss_functions``): a
tensor-parallel language model's logits are sharded over the vocabulary, and megatron-core's vocab-parallel
cross-entropy never gathers them.
"""

from __future__ import annotations

from typing import Optional

import torch

from m2dist.data.contract import ATTENTION_MASK, IGNORE_INDEX, IMAGES, INPUT_IDS, LABELS
from m2dist.parallel import loss_functions


def _per_token_loss(model, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return loss_functions(model).cross_entropy(logits, labels)


def to_device(t: torch.Tensor, device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A host batch tensor on ``device``: through pinned memory, without blocking, on a GPU. A plain ``.to(cuda)``
    of pageable memory synchronises the stream, so the host could not queue the next micro-step's kernels while the
    GPU finishes the last one."""
    device = torch.device(device)
    if device.type == "cuda" and not t.is_cuda:
        t = t.pin_memory()
    return t.to(device=device, dtype=dtype, non_blocking=True)


def forward(engine, batch: dict, task: str, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of one micro-batch (inputs moved to the engine's device and dtype)."""
    labels = to_device(batch[LABELS], device)
    if task == "image":
        logits = engine(to_device(batch[IMAGES], device, dtype))
    else:
        # A causal model gets no padding mask: the reader pads on the right (m2dist.data.samples), so no real
        # position can see a pad, and pads' labels are ignored. An all-ones mask of packed data would cost M2-GPT
        # two full-size masking products per layer each way (~50 ms of a 360M step at L=2048, benchmarks/NOTES.md
        # attempt 20) and the Transformer SDPA's flash kernel.
        mask = batch.get(ATTENTION_MASK) if task != "causal_lm" else None
        # A bidirectional model needs the mask only where a sample is padded. Packed data has none, and an all-ones
        # mask costs the same as a real one (M2's masking products and SDPA's non-flash kernel), so it is dropped;
        # checked on the host copy the loader made, which needs no device sync.
        if mask is not None and not mask.is_cuda and bool(mask.all()):
            mask = None
        ids = to_device(batch[INPUT_IDS], device)
        logits = engine(ids, to_device(mask, device)) if mask is not None else engine(ids)
    return logits, labels


def training_loss_sum(model, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the micro-batch's per-target losses (the trainer divides by the global batch's target count)."""
    losses = _per_token_loss(model, logits, labels)
    valid = (labels != IGNORE_INDEX).to(losses.dtype)
    return (losses * valid).sum()


@torch.no_grad()
def per_sample_stats(model, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, int, int]]:
    """(loss sum, counted targets, correct predictions) per sample: evaluation merges them by sample id, so the
    result does not depend on how samples were spread over ranks (or padded by the reader)."""
    losses = _per_token_loss(model, logits, labels).float()
    # Vocab-parallel logits hold V/k columns per rank: the argmax must be taken over the whole vocabulary.
    argmax = loss_functions(model).argmax
    if labels.dim() == 1:  # images
        correct = (logits.argmax(-1) == labels).long()
        return [(losses[i].item(), 1, int(correct[i])) for i in range(labels.shape[0])]
    valid = labels != IGNORE_INDEX
    correct = (argmax(logits) == labels) & valid
    sums = (losses * valid).sum(1)
    return [(sums[i].item(), int(valid[i].sum()), int(correct[i].sum())) for i in range(labels.shape[0])]


def summarize(task: str, loss_sum: float, count: int, correct: int) -> dict:
    import math

    loss = loss_sum / max(count, 1)
    accuracy = correct / max(count, 1)
    if task == "causal_lm":
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
    if task == "mlm":
        return {"eval_loss": loss, "eval_accuracy": accuracy}
    return {"eval_loss": loss, "eval_top1": accuracy}
