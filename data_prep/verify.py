"""``m2dist prep verify DIR``: prove a prepared dataset is whole before a week of training depends on it.

For each split (a folder with a merged ``index.json``): every shard file exists with the size and SHA-1
the index records; every sample is read back through ``StreamingDataset``; samples and tokens (or images
per class) are counted and compared with ``report.json``; a few samples are decoded and shown.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

from data_prep.parts import MERGED_INDEX
from data_prep.report import REPORT_NAME
from m2dist.data.checks import shard_problems
from m2dist.data.contract import IMAGE_COLUMN, LABEL_COLUMN, SOURCE_COLUMN, TOKENS_COLUMN


def find_splits(root: Path) -> list[Path]:
    if (root / MERGED_INDEX).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and ((p / MERGED_INDEX).is_file() or
                                                                any(p.glob("part-*"))))


def verify_split(split_dir: Path, sp, show: int) -> list[str]:
    """Problems of one split; ``sp`` is the sentencepiece model to decode with, or None."""
    from streaming import StreamingDataset

    if not (split_dir / MERGED_INDEX).is_file():
        return [f"{split_dir}: no merged index.json (the prep run did not finish, or --strict refused it)"]
    index = json.loads((split_dir / MERGED_INDEX).read_text())
    errors = shard_problems(split_dir, index, hashes=True)
    if errors:
        return errors
    indexed = sum(s["samples"] for s in index["shards"])
    if indexed == 0:
        return [f"{split_dir / MERGED_INDEX}: no samples (the prep input was empty or all bad)"]
    columns = index["shards"][0]["column_names"] if index["shards"] else []
    from m2dist.data.shm import registering_prefix

    with registering_prefix():  # another job on this host may be taking a streaming prefix
        ds = StreamingDataset(local=str(split_dir), shuffle=False, batch_size=1)
    tokens, lengths, per_label, sources = 0, Counter(), Counter(), Counter()
    for i in range(ds.num_samples):
        sample = ds[i]
        if TOKENS_COLUMN in columns:
            ids = sample[TOKENS_COLUMN]
            tokens += len(ids)
            lengths[len(ids)] += 1
            if sp is not None and len(ids) and int(ids.max()) >= sp.get_piece_size():
                errors.append(f"{split_dir} sample {i}: token id {int(ids.max())} >= vocab {sp.get_piece_size()}")
            if SOURCE_COLUMN in columns:
                sources[sample[SOURCE_COLUMN]] += 1
            if i < show:
                text = sp.decode(ids.tolist()) if sp is not None else str(ids[:32].tolist())
                print(f"  sample {i}: {text[:200]!r}")
        if IMAGE_COLUMN in columns:
            img = sample[IMAGE_COLUMN]
            try:
                img.load()
            except OSError as exc:
                errors.append(f"{split_dir} sample {i}: image does not decode: {exc}")
                continue
            if img.mode != "RGB":
                errors.append(f"{split_dir} sample {i}: image mode {img.mode}, expected RGB")
            per_label[int(sample[LABEL_COLUMN])] += 1
            if i < show:
                print(f"  sample {i}: {img.format} {img.mode} {img.size[0]}x{img.size[1]} label {sample[LABEL_COLUMN]}")
    if ds.num_samples != indexed:
        errors.append(f"{split_dir}: read {ds.num_samples} samples, index lists {indexed}")

    report_path = split_dir / REPORT_NAME
    if report_path.is_file():
        totals = json.loads(report_path.read_text())["totals"]
        expected = totals.get("samples", totals.get("images"))
        if expected is not None and expected != indexed:
            errors.append(f"{split_dir}: {indexed} samples, {REPORT_NAME} says {expected}")
        if "written_tokens" in totals and totals["written_tokens"] != tokens:
            errors.append(f"{split_dir}: {tokens} tokens, {REPORT_NAME} says {totals['written_tokens']}")

    line = f"{split_dir}: {len(index['shards'])} shards ok, {indexed:,} samples"
    if TOKENS_COLUMN in columns:
        line += f", {tokens:,} tokens (sample lengths: {dict(sorted(lengths.items())[:5])})"
        if sources:
            line += f", by source: {dict(sorted(sources.items()))}"
    if per_label:
        line += f", images per class: {dict(sorted(per_label.items()))}"
    print(line)
    return errors


def verify(root: str, tokenizer: Optional[str] = None, show: int = 2) -> int:
    root_p = Path(root)
    if not root_p.is_dir():
        print(f"m2dist: error: {root}: no such directory", file=sys.stderr)
        return 2
    splits = find_splits(root_p)
    if not splits:
        print(f"m2dist: error: {root}: no prepared split (a folder with {MERGED_INDEX})", file=sys.stderr)
        return 1
    sp = None
    if tokenizer:  # loaded first: a bad --tokenizer is one line before any shard is read
        from m2dist.data.tokenizer import load_sentencepiece

        sp = load_sentencepiece(str(Path(tokenizer).resolve()))
    errors = []
    for split_dir in splits:
        errors += verify_split(split_dir, sp, show)
    for err in errors:
        print(f"m2dist: error: {err}", file=sys.stderr)
    print(f"verify: {len(splits)} splits, {'FAILED with ' + str(len(errors)) + ' errors' if errors else 'all ok'}")
    return 1 if errors else 0
