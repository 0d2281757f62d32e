"""Synthetic inputs in the real formats, for the tests and the benchmark (any size, seeded).

Documents mix ASCII words with the text that breaks naive pipelines: accents, CJK, emoji, combining
marks, runs of spaces, tabs and newlines. Writers produce Pile-style ``.jsonl.zst`` (optionally as several
zstd frames, like files written in chunks) and C4-style ``.json.gz``, from given raw lines so that tests
can slip malformed lines in; ``truncate`` cuts a compressed file short as an interrupted download would.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

_WORDS = ("the model data monarch mixer matrix sub-quadratic causal attention token shard stream fourier "
          "kernel gradient batch epoch layer norm residual block diagonal butterfly convolution filter").split()
_ODD = ["naïve", "Zürich", "東京", "数据", "🙂", "e\u0301", "ß", "Ωmega", "ﬁ", "\u00a0nbsp"]


def synthetic_documents(n: int, seed: int = 0, min_words: int = 5, max_words: int = 120) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        words = []
        for _ in range(int(rng.integers(min_words, max_words))):
            r = rng.random()
            words.append(_ODD[int(rng.integers(len(_ODD)))] if r < 0.08 else _WORDS[int(rng.integers(len(_WORDS)))])
            sep = rng.random()
            words.append("\n" if sep < 0.04 else "  " if sep < 0.07 else "\t" if sep < 0.08 else " ")
        docs.append("".join(words).strip(" ") or "x")
    return docs


def pile_lines(docs: Sequence[str], sets: Sequence[str]) -> list[bytes]:
    return [json.dumps({"text": d, "meta": {"pile_set_name": s}}).encode() for d, s in zip(docs, sets)]


def c4_lines(docs: Sequence[str]) -> list[bytes]:
    return [json.dumps({"text": d, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.com/{i}"}).encode()
            for i, d in enumerate(docs)]


def write_zst(path: Path, lines: Sequence[bytes], frames: int = 1) -> Path:
    """Lines joined by newlines, compressed as ``frames`` consecutive zstd frames (streamed, as real dumps are)."""
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line + b"\n" for line in lines)
    cuts = np.linspace(0, len(data), frames + 1).astype(int)
    with open(path, "wb") as fh:
        for a, b in zip(cuts[:-1], cuts[1:]):
            with zstandard.ZstdCompressor(level=3).stream_writer(fh, closefd=False) as writer:
                for i in range(a, b, 1 << 14):  # many small blocks, so a cut file still yields data
                    writer.write(data[i:min(b, i + (1 << 14))])
                    writer.flush(zstandard.FLUSH_BLOCK)
    return path


def write_gz(path: Path, lines: Sequence[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(b"".join(line + b"\n" for line in lines))
    return path


def truncate(path: Path, fraction: float) -> int:
    """Keep the first ``fraction`` of the file's bytes; return the new size."""
    data = path.read_bytes()
    keep = int(len(data) * fraction)
    path.write_bytes(data[:keep])
    return keep


@contextlib.contextmanager
def private_streaming_tempdir(directory: Optional[str] = None) -> Iterator[str]:
    """Point ``tempfile.gettempdir()`` (where streaming leaves one filelock per dataset, never removed)
    at a private folder for the duration, so those files go away with it. Child processes follow TMPDIR.
    """
    own = directory or tempfile.mkdtemp(prefix="m2dist-streaming-")
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = own
    os.environ["TMPDIR"] = own
    try:
        yield own
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        if directory is None:
            shutil.rmtree(own, ignore_errors=True)
