"""The one text pipeline behind ``m2dist prep pile`` and ``m2dist prep c4``.

Per input file (one part each): read documents (``documents.py`` knows the formats), keep the selected
Pile subsets, tokenize with sentencepiece, append EOS, pack into samples of exactly ``seq_len`` tokens
(``packing.py``), and write MDS with column ``tokens`` (plus ``source``, the Pile subset of the sample's
first document). Parts run in parallel and resume through ``parts.py``; ``report.py`` writes what was
skipped and why.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from data_prep.documents import FORMAT_SUFFIXES, FileOutcome, Skip, iter_documents
from data_prep.input_files import expand_inputs
from data_prep.packing import Packer
from data_prep.parts import Part, file_sha256, fingerprint, merge_parts, run_parts
from data_prep.report import finish_split
from m2dist.config.loader import ConfigError
from m2dist.data.contract import SOURCE_COLUMN, TOKENS_COLUMN
from m2dist.data.tokenizer import load_sentencepiece, token_dtype

log = logging.getLogger("data_prep")

# Documents are tokenized in batches: one sentencepiece call per batch amortises the Python overhead.
_ENCODE_BATCH = 256
# A part lists at most this many skipped lines individually (the counts are always exact).
MAX_LISTED_SKIPS = 10_000


@dataclass(frozen=True)
class TextPrepSettings:
    fmt: str
    tokenizer: str
    tokenizer_sha256: str
    seq_len: int
    pack: bool = True
    subsets: Optional[tuple[str, ...]] = None
    exclude_subsets: Optional[tuple[str, ...]] = None
    compression: Optional[str] = None
    shard_size: str = "64mb"
    columns: dict = field(default_factory=dict)

    def keeps(self, source: Optional[str]) -> bool:
        if self.subsets is not None and source not in self.subsets:
            return False
        return not (self.exclude_subsets is not None and source in self.exclude_subsets)


def text_columns(fmt: str, vocab_size: int) -> dict:
    columns = {TOKENS_COLUMN: token_dtype(vocab_size)}
    if fmt == "pile":
        columns[SOURCE_COLUMN] = "str"
    return columns


def prep_text_part(settings: TextPrepSettings, part: Part, out_dir: Path, report) -> dict:
    """Write one part (its input files, in order) into ``out_dir``; return its statistics."""
    from streaming import MDSWriter

    sp = load_sentencepiece(settings.tokenizer)
    eos = sp.eos_id()
    dtype = settings.columns[TOKENS_COLUMN].split(":")[1]
    packer = Packer(settings.seq_len, settings.pack, dtype)
    counts = {"documents": 0, "tokens": 0, "samples": 0, "skipped": 0, "filtered": 0}
    filtered_by_subset: dict[str, int] = {}
    files, skipped = [], []

    with MDSWriter(out=str(out_dir), columns=settings.columns, compression=settings.compression,
                   hashes=["sha1"], size_limit=settings.shard_size) as writer:

        def write_batch(batch):
            ids_per_doc = sp.encode([d.text for d in batch], num_threads=1)
            tokens = 0
            for doc, ids in zip(batch, ids_per_doc):
                ids.append(eos)
                tokens += len(ids)
                for sample, source in packer.add(ids, doc.source):
                    row = {TOKENS_COLUMN: sample}
                    if SOURCE_COLUMN in settings.columns:
                        row[SOURCE_COLUMN] = source or ""
                    writer.write(row)
                    counts["samples"] += 1
            counts["documents"] += len(batch)
            counts["tokens"] += tokens
            report(documents=len(batch), tokens=tokens)
            return tokens

        for path in part.inputs:
            outcome = FileOutcome(path)
            file_docs = file_tokens = file_skips = 0
            batch = []
            for item in iter_documents(path, settings.fmt, outcome):
                if isinstance(item, Skip):
                    file_skips += 1
                    if len(skipped) < MAX_LISTED_SKIPS:
                        skipped.append({"file": path, "line": item.line, "reason": item.reason})
                    continue
                if not settings.keeps(item.source):
                    filtered_by_subset[str(item.source)] = filtered_by_subset.get(str(item.source), 0) + 1
                    continue
                batch.append(item)
                if len(batch) == _ENCODE_BATCH:
                    file_tokens += write_batch(batch)
                    file_docs += len(batch)
                    batch = []
            if batch:
                file_tokens += write_batch(batch)
                file_docs += len(batch)
            counts["skipped"] += file_skips
            files.append({"file": path, "lines": outcome.lines, "documents": file_docs, "tokens": file_tokens,
                          "skipped": file_skips, "size": outcome.size,
                          "compressed_bytes_read": outcome.compressed_bytes_read,
                          "decompressed_bytes": outcome.decompressed_bytes,
                          "error": outcome.error, "empty": outcome.empty})

    counts["filtered"] = sum(filtered_by_subset.values())
    counts["written_tokens"] = counts["tokens"] - packer.leftover_tokens - packer.truncated_tokens
    counts["dropped_tail_tokens"] = packer.leftover_tokens
    counts["truncated_tokens"] = packer.truncated_tokens
    return {"counts": counts, "files": files, "skipped": skipped, "filtered_by_subset": filtered_by_subset}


def _split_list(value: Optional[str]) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    return tuple(sorted(s.strip() for s in value.split(",") if s.strip()))


def prep_text(fmt: str, inputs: list[str], output: str, tokenizer: str, seq_len: int, *, split: str,
              workers: int = 1, subsets: Optional[str] = None, exclude_subsets: Optional[str] = None,
              compression: Optional[str] = None, shard_size: str = "64mb", pack: bool = True,
              strict: bool = False) -> int:
    """Prepare one split; return the process exit code (non-zero under ``--strict`` when input was bad)."""
    import functools

    if not Path(tokenizer).is_file():
        raise ConfigError(f"{tokenizer}: no such tokenizer model (train one with `m2dist tokenizer train`)")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if seq_len < 2:
        raise ConfigError(f"--seq-len must be at least 2, got {seq_len}")
    if fmt != "pile" and (subsets or exclude_subsets):
        raise ConfigError(f"--subsets/--exclude-subsets select Pile subsets (meta.pile_set_name); {fmt} has none")
    ignored: list[str] = []
    files = expand_inputs(inputs, FORMAT_SUFFIXES[fmt], fmt, ignored=ignored)
    sp = load_sentencepiece(str(Path(tokenizer).resolve()))
    settings = TextPrepSettings(
        fmt=fmt, tokenizer=str(Path(tokenizer).resolve()), tokenizer_sha256=file_sha256(tokenizer),
        seq_len=seq_len, pack=pack, subsets=_split_list(subsets), exclude_subsets=_split_list(exclude_subsets),
        compression=compression, shard_size=shard_size, columns=text_columns(fmt, sp.get_piece_size()))
    key_settings = {k: v for k, v in asdict(settings).items() if k != "tokenizer"}
    parts = [Part(i, [f], fingerprint(key_settings, [f])) for i, f in enumerate(files)]

    split_dir = Path(output) / split
    log.info("%s: %d input files -> %s (%d workers)", fmt, len(files), split_dir, workers)
    results, reused = run_parts(split_dir, parts, functools.partial(prep_text_part, settings), workers=workers,
                                unit="documents", rate_key="tokens", log=log)
    return finish_split(split_dir, parts, results, reused, settings=asdict(settings), strict=strict,
                        merge=merge_parts, ignored_files=ignored)
