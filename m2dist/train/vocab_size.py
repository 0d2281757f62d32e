"""The one model-config value left to the data: the vocabulary size follows the tokenizer unless it is set."""

from __future__ import annotations

from m2dist.config.schema import Config
from m2dist.data.contract import task_of


def resolve_vocab_size(cfg: Config) -> None:
    """Fill in what the model config leaves to the data: the vocabulary size follows the tokenizer unless set."""
    if task_of(cfg) == "image" or cfg.model.vocab_size > 0:
        return
    if not cfg.data.tokenizer:
        raise ValueError("model.vocab_size is 0 and data.tokenizer is not set: one of them must give the vocabulary")
    from m2dist.data.tokenizer import tokenizer_info

    cfg.model.vocab_size = tokenizer_info(cfg.data.tokenizer).vocab_size
