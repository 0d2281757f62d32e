"""The sentencepiece vocabulary contract shared by ``m2dist tokenizer train``, ``m2dist prep`` and the readers.

Every m2dist tokenizer reserves the same special pieces at the same ids, so prepared data, readers and
models agree without extra configuration: pad 0, unk 1, bos 2, eos 3, then ``<mask>`` (a control symbol, so
no input text can ever produce it; only the MLM reader inserts it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MASK_PIECE = "<mask>"


@dataclass(frozen=True)
class TokenizerInfo:
    """What a reader needs to know about a vocabulary."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int
    mask_id: int
    # Ids that masking must never touch or sample (pad/unk/bos/eos/mask).
    special_ids: tuple[int, ...]


@lru_cache(maxsize=8)
def load_sentencepiece(model_path: str):
    """The sentencepiece model at ``model_path``; a missing or unreadable file is one ConfigError line naming it."""
    import os

    import sentencepiece as spm

    from m2dist.config.loader import ConfigError

    if not os.path.isfile(model_path):
        raise ConfigError(f"{model_path}: no such tokenizer model (train one with `m2dist tokenizer train`)")
    try:
        return spm.SentencePieceProcessor(model_file=str(model_path))
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"{model_path}: not a sentencepiece model ({str(exc).splitlines()[0]})") from None


@lru_cache(maxsize=8)
def tokenizer_info(model_path: str) -> TokenizerInfo:
    sp = load_sentencepiece(model_path)
    mask_id = sp.piece_to_id(MASK_PIECE)
    if mask_id == sp.unk_id():
        mask_id = -1  # not an m2dist tokenizer: MLM will refuse it
    specials = tuple(sorted({i for i in (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id(), mask_id) if i >= 0}))
    return TokenizerInfo(vocab_size=sp.get_piece_size(), pad_id=sp.pad_id(), eos_id=sp.eos_id(),
                         bos_id=sp.bos_id(), mask_id=mask_id, special_ids=specials)


def token_dtype(vocab_size: int) -> str:
    """MDS column type for token ids: uint16 halves the shards whenever the vocabulary fits."""
    return "ndarray:uint16" if vocab_size <= 1 << 16 else "ndarray:uint32"
