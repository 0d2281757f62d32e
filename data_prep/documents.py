"""Reading documents out of the real corpus formats, line by line, without ever losing track of bad input.

One reader per *container* (``.zst``, ``.gz``, plain) yields raw lines; one parser per *record format*
(Pile, C4, plain text) turns a line into a :class:`Document` or a :class:`Skip`. A truncated or corrupt
compressed stream ends the file early and is described by :class:`FileOutcome` (how many lines and
compressed bytes were read before it broke), so the caller can report it and carry on with other files.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

# Formats and the file names that belong to each (directories given as input are searched for these).
FORMAT_SUFFIXES = {
    "pile": (".jsonl.zst", ".jsonl", ".json.zst"),
    "c4": (".json.gz", ".jsonl.gz", ".json", ".jsonl"),
    "text": (".txt", ".txt.gz", ".txt.zst"),
}

_CHUNK = 1 << 20


@dataclass
class Document:
    text: str
    line: int
    # The Pile's meta.pile_set_name; None for formats without subsets.
    source: Optional[str] = None


@dataclass
class Skip:
    line: int
    reason: str


@dataclass
class FileOutcome:
    """How reading one file ended."""

    path: str
    lines: int = 0
    compressed_bytes_read: int = 0
    decompressed_bytes: int = 0
    size: int = 0
    # Set when the stream broke (truncated or corrupt): the error, and how far reading got.
    error: Optional[str] = None
    empty: bool = False
    extra: dict = field(default_factory=dict)


class StreamBroken(Exception):
    """A compressed stream ended early or is corrupt; carries the decompressor's message."""


def _framed_chunks(fh, new_decoder: Callable, errors: tuple, what: str) -> Iterator[bytes]:
    """Decompress concatenated frames (zstd) or members (gzip) chunk by chunk.

    A decoder per frame, because a file may hold several (Pile dumps, ``cat``-ed gzips), and because the
    decoder's ``eof`` at the end of the input is what tells a complete file from a truncated one. Chunked
    decoding also hands over everything before the point of truncation, not just whole read() calls.
    """
    decoder, in_frame = new_decoder(), False
    while True:
        raw = fh.read(_CHUNK)
        if not raw:
            break
        while raw:
            in_frame = True
            try:
                out = decoder.decompress(raw)
            except errors as exc:
                raise StreamBroken(f"corrupt {what} data: {exc}") from exc
            if out:
                yield out
            if decoder.eof:
                raw = decoder.unused_data
                decoder, in_frame = new_decoder(), False
            else:
                raw = b""
    if in_frame:
        raise StreamBroken(f"truncated {what} stream (the file ends inside a compressed frame)")


def _zstd_chunks(fh) -> Iterator[bytes]:
    import zstandard

    return _framed_chunks(fh, lambda: zstandard.ZstdDecompressor().decompressobj(), (zstandard.ZstdError,), "zstd")


def _gzip_chunks(fh) -> Iterator[bytes]:
    # wbits 16 + 15: a gzip header and trailer around a deflate stream with a 32 KiB window.
    return _framed_chunks(fh, lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), (zlib.error,), "gzip")


def _plain_chunks(fh) -> Iterator[bytes]:
    while True:
        out = fh.read(_CHUNK)
        if not out:
            return
        yield out


def _container_reader(path: str) -> Callable:
    if path.endswith(".zst"):
        return _zstd_chunks
    if path.endswith(".gz"):
        return _gzip_chunks
    return _plain_chunks


def iter_lines(path: str, outcome: FileOutcome) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, line_bytes)`` (1-based, without newline); fill ``outcome`` as reading goes.

    A trailing line without a newline is a complete line in an intact file, but in a broken stream it is
    a fragment and is not yielded.
    """
    outcome.size = Path(path).stat().st_size
    chunks = _container_reader(path)
    pending = b""
    with open(path, "rb") as fh:
        try:
            for chunk in chunks(fh):
                outcome.compressed_bytes_read = fh.tell()
                outcome.decompressed_bytes += len(chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    outcome.lines += 1
                    yield outcome.lines, line
        except StreamBroken as exc:
            outcome.error = str(exc)
            outcome.compressed_bytes_read = fh.tell()
            return
        outcome.compressed_bytes_read = fh.tell()
    if pending:
        outcome.lines += 1
        yield outcome.lines, pending
    outcome.empty = outcome.lines == 0


def _json_document(line_no: int, raw: bytes, source_of: Callable[[dict], Optional[str]]) -> Union[Document, Skip]:
    try:
        # Decode first: json.loads(bytes) would guess UTF-16/32 from the first bytes instead of failing.
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Skip(line_no, "invalid UTF-8")
    except json.JSONDecodeError as exc:
        return Skip(line_no, f"malformed JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(obj, dict) or "text" not in obj:
        return Skip(line_no, "no 'text' field")
    text = obj["text"]
    if not isinstance(text, str):
        return Skip(line_no, f"'text' is {type(text).__name__}, not a string")
    if not text.strip():
        return Skip(line_no, "empty document")
    return Document(text, line_no, source_of(obj))


def _pile_source(obj: dict) -> Optional[str]:
    meta = obj.get("meta")
    return meta.get("pile_set_name") if isinstance(meta, dict) else None


def parse_pile_line(line_no: int, raw: bytes) -> Union[Document, Skip]:
    """``{"text": ..., "meta": {"pile_set_name": ...}}``"""
    return _json_document(line_no, raw, _pile_source)


def parse_c4_line(line_no: int, raw: bytes) -> Union[Document, Skip]:
    """``{"text": ..., "timestamp": ..., "url": ...}``"""
    return _json_document(line_no, raw, lambda obj: None)


def parse_text_line(line_no: int, raw: bytes) -> Union[Document, Skip]:
    """Plain text: one document per line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Skip(line_no, "invalid UTF-8")
    if not text.strip():
        return Skip(line_no, "empty document")
    return Document(text, line_no)


LINE_PARSERS = {"pile": parse_pile_line, "c4": parse_c4_line, "text": parse_text_line}


def iter_documents(path: str, fmt: str, outcome: FileOutcome) -> Iterator[Union[Document, Skip]]:
    parse = LINE_PARSERS[fmt]
    for line_no, raw in iter_lines(path, outcome):
        yield parse(line_no, raw)
