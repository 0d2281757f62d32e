"""Turning a stream of tokenized documents into fixed-length samples."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np


class Packer:
    """Concatenates documents (each already ending in EOS) and cuts the stream into samples of exactly
    ``seq_len`` tokens; a sample's ``source`` is the source of the document its first token belongs to.

    With ``pack=False`` each document is its own sample, cut to at most ``seq_len`` tokens (the MLM recipe
    of the reference: one document per sample); the tokens cut off are counted in ``truncated_tokens``.
    """

    def __init__(self, seq_len: int, pack: bool, dtype):
        self.seq_len = seq_len
        self.pack = pack
        self.dtype = dtype
        self.buffer: list[int] = []
        # (position in buffer, source) of each document that starts inside the buffer, in order.
        self.doc_starts: list[tuple[int, Optional[str]]] = []
        self.head_source: Optional[str] = None
        self.truncated_tokens = 0

    def add(self, ids: list[int], source: Optional[str]) -> Iterator[tuple[np.ndarray, Optional[str]]]:
        if not self.pack:
            self.truncated_tokens += max(0, len(ids) - self.seq_len)
            yield np.asarray(ids[: self.seq_len], dtype=self.dtype), source
            return
        if not self.buffer:
            self.head_source = source
        else:
            self.doc_starts.append((len(self.buffer), source))
        self.buffer.extend(ids)
        n = self.seq_len
        while len(self.buffer) >= n:
            sample, self.buffer = self.buffer[:n], self.buffer[n:]
            yield np.asarray(sample, dtype=self.dtype), self.head_source
            # The document covering the new first token is the last one that started at or before it.
            remaining = []
            for pos, src in self.doc_starts:
                if pos <= n:
                    self.head_source = src
                else:
                    remaining.append((pos - n, src))
            self.doc_starts = remaining

    @property
    def leftover_tokens(self) -> int:
        """Tokens of the final partial sample, which are dropped."""
        return len(self.buffer)
