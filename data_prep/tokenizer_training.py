"""``m2dist tokenizer train``: a sentencepiece model over Pile / C4 / plain-text files.

The model carries the special ids of :mod:`m2dist.data.tokenizer` (pad 0, unk 1, bos 2, eos 3, ``<mask>``),
falls back to bytes so any UTF-8 text encodes without ``<unk>``, and normalizes nothing (identity rule, no
whitespace folding) so that ``decode(encode(text)) == text`` for every input.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterator, Optional

from data_prep.documents import FORMAT_SUFFIXES, Document, FileOutcome, iter_documents
from data_prep.input_files import expand_inputs
from m2dist.config.loader import ConfigError
from m2dist.data.tokenizer import BOS_ID, EOS_ID, MASK_PIECE, PAD_ID, UNK_ID

log = logging.getLogger("data_prep")

# sentencepiece trains on "sentences" and silently drops any longer than max_sentence_length bytes, so
# documents are fed line by line and overlong lines are cut into pieces of this many characters.
_MAX_PIECE_CHARS = 4096


def training_sentences(files: list[str], fmt: str, sample_docs: Optional[int]) -> Iterator[str]:
    """Lines of the first ``sample_docs`` documents, taken evenly across files (all documents when None)."""
    quota = math.ceil(sample_docs / len(files)) if sample_docs else None
    for path in files:
        taken = 0
        outcome = FileOutcome(path)
        for item in iter_documents(path, fmt, outcome):
            if quota is not None and taken >= quota:
                break
            if not isinstance(item, Document):
                continue
            taken += 1
            for line in item.text.split("\n"):
                for start in range(0, len(line), _MAX_PIECE_CHARS):
                    piece = line[start:start + _MAX_PIECE_CHARS]
                    if piece.strip():
                        yield piece
        if outcome.error:
            log.warning("%s: %s (used the %d lines read before it)", path, outcome.error, outcome.lines)


def train_tokenizer(inputs: list[str], fmt: str, vocab_size: int, output_prefix: str, *,
                    model_type: str = "bpe", sample_docs: Optional[int] = None) -> tuple[str, str]:
    import sentencepiece as spm

    files = expand_inputs(inputs, FORMAT_SUFFIXES[fmt], fmt)
    minimum = 256 + 5 + 1  # byte pieces + specials + at least one learned piece
    if vocab_size < minimum:
        raise ConfigError(f"--vocab-size {vocab_size} is too small: byte fallback alone needs 256 pieces "
                          f"plus 5 special ones (use at least {minimum})")
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    log.info("training a %s tokenizer (vocab %d) on %d files", model_type, vocab_size, len(files))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(files, fmt, sample_docs),
            model_prefix=output_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            control_symbols=[MASK_PIECE],
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=_MAX_PIECE_CHARS * 4,
            # A small corpus may not support the requested size; take what it supports instead of failing.
            hard_vocab_limit=False,
            num_threads=max(1, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ConfigError(f"sentencepiece training failed: {str(exc).splitlines()[-1]}") from exc
    return f"{output_prefix}.model", f"{output_prefix}.vocab"
