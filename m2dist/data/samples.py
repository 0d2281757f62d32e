"""Per-sample transforms: stored tokens into causal-LM or MLM training examples.

Each transform is a pure function of the stored sample, the global sample index and the seed (plus the
epoch, so MLM masks differ between epochs), which is what makes a resumed run see exactly the examples
an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

from m2dist.data.contract import ATTENTION_MASK, IGNORE_INDEX, INPUT_IDS, LABELS


def _pad(tokens: np.ndarray, seq_len: int, pad_id: int) -> tuple[np.ndarray, int]:
    n = min(len(tokens), seq_len)
    out = np.full(seq_len, pad_id, dtype=np.int64)
    out[:n] = tokens[:n]
    return out, n


def causal_lm_example(tokens: np.ndarray, seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` = the first ``seq_len`` stored tokens; ``labels[t]`` = the token after position t.

    Prep packs samples of exactly ``seq_len`` tokens, so the last position has no next token inside the
    sample and is ignored (-100): a sample trains ``seq_len - 1`` predictions and keeps the power-of-two
    length the FFT convolutions want. A stored sample longer than ``seq_len`` supplies that last label.
    Shorter samples (``--no-pack``) are padded; padding is ignored and masked out.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    input_ids, n = _pad(tokens, seq_len, pad_id)
    labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    labels[: n - 1] = tokens[1:n]
    if len(tokens) > seq_len:
        labels[seq_len - 1] = tokens[seq_len]
    mask = np.zeros(seq_len, dtype=np.int64)
    mask[:n] = 1
    return {INPUT_IDS: torch.from_numpy(input_ids), LABELS: torch.from_numpy(labels),
            ATTENTION_MASK: torch.from_numpy(mask)}


def mlm_example(tokens: np.ndarray, seq_len: int, *, pad_id: int, mask_id: int, vocab_size: int,
                special_ids: tuple[int, ...], probability: float, seed: int, epoch: int,
                sample_id: int) -> dict[str, torch.Tensor]:
    """BERT masking: each ordinary token is chosen with ``probability``; chosen tokens become ``<mask>``
    (80%), a random ordinary token (10%) or stay (10%); ``labels`` hold the original token at chosen
    positions and -100 elsewhere. Special tokens (pad, bos, eos, unk, mask) are never chosen.
    """
    input_ids, n = _pad(np.asarray(tokens, dtype=np.int64), seq_len, pad_id)
    rng = np.random.default_rng([seed, epoch, sample_id])
    choose_draw, kind_draw = rng.random(seq_len), rng.random(seq_len)
    random_tokens = rng.integers(max(special_ids) + 1, vocab_size, size=seq_len)
    maskable = np.zeros(seq_len, dtype=bool)
    maskable[:n] = ~np.isin(input_ids[:n], special_ids)
    chosen = maskable & (choose_draw < probability)
    labels = np.where(chosen, input_ids, IGNORE_INDEX)
    masked = input_ids.copy()
    masked[chosen & (kind_draw < 0.8)] = mask_id
    swap = chosen & (kind_draw >= 0.8) & (kind_draw < 0.9)
    masked[swap] = random_tokens[swap]
    attention = np.zeros(seq_len, dtype=np.int64)
    attention[:n] = 1
    return {INPUT_IDS: torch.from_numpy(masked), LABELS: torch.from_numpy(labels),
            ATTENTION_MASK: torch.from_numpy(attention)}


def collate_samples(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack per-sample tensors key by key (all per-sample work is done in the datasets' workers)."""
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}
