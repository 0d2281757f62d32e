"""StreamingDataset subclasses that turn stored MDS samples into training examples.

streaming's ``__iter__`` calls ``__getitem__`` with the *global* sample index, which each example carries
as ``sample_ids``; the transforms in ``samples.py`` and ``image_transforms.py`` are seeded by it.
"""

from __future__ import annotations

import torch
from streaming import StreamingDataset

from m2dist.data.contract import IMAGE_COLUMN, IMAGES, LABEL_COLUMN, LABELS, SAMPLE_IDS, TOKENS_COLUMN
from m2dist.data.image_transforms import image_tensor
from m2dist.data.samples import causal_lm_example, mlm_example
from m2dist.data.tokenizer import TokenizerInfo


class _EpochAware(StreamingDataset):
    @property
    def current_epoch(self) -> int:
        # streaming pre-increments its shared epoch counter when an epoch's iteration starts.
        return max(self.next_epoch - 1, 0)


class TokenDataset(_EpochAware):
    """Samples of the ``tokens`` column as causal-LM (``kind="causal_lm"``) or masked-LM (``"mlm"``) examples."""

    def __init__(self, *, kind: str, seq_len: int, tokenizer: TokenizerInfo, mlm_probability: float = 0.3,
                 seed: int = 0, **streaming_kwargs):
        super().__init__(**streaming_kwargs)
        if kind not in ("causal_lm", "mlm"):
            raise ValueError(f"TokenDataset kind must be causal_lm or mlm, not {kind!r}")
        if kind == "mlm" and tokenizer.mask_id < 0:
            raise ValueError("MLM needs a tokenizer with a <mask> piece (train it with `m2dist tokenizer train`)")
        self.kind = kind
        self.seq_len = seq_len
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.seed = seed

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        tokens = super().__getitem__(idx)[TOKENS_COLUMN]
        if self.kind == "causal_lm":
            example = causal_lm_example(tokens, self.seq_len, self.tokenizer.pad_id)
        else:
            t = self.tokenizer
            example = mlm_example(tokens, self.seq_len, pad_id=t.pad_id, mask_id=t.mask_id,
                                  vocab_size=t.vocab_size, special_ids=t.special_ids,
                                  probability=self.mlm_probability, seed=self.seed, epoch=self.current_epoch,
                                  sample_id=idx)
        example[SAMPLE_IDS] = torch.tensor(idx, dtype=torch.int64)
        return example


class ImageDataset(_EpochAware):
    """Samples of the ``image``/``label`` columns as normalized ``(3, size, size)`` tensors."""

    def __init__(self, *, image_size: int, train: bool, seed: int = 0, **streaming_kwargs):
        super().__init__(**streaming_kwargs)
        self.image_size = image_size
        self.train = train
        self.seed = seed

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)
        images = image_tensor(sample[IMAGE_COLUMN], self.image_size, train=self.train, seed=self.seed,
                              epoch=self.current_epoch, sample_id=idx)
        return {IMAGES: images, LABELS: torch.tensor(int(sample[LABEL_COLUMN]), dtype=torch.int64),
                SAMPLE_IDS: torch.tensor(idx, dtype=torch.int64)}
