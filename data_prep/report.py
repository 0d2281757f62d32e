"""``DIR/<split>/report.json`` and the end-of-run summary: every input that did not make it, and why.

A part returns ``{"counts": {...}, "files": [...], "skipped": [{"file", "line", "reason"}], ...}``;
this module adds the parts up, names every skipped line, every truncated or corrupt compressed file
(with how far reading got) and every empty file, and applies ``--strict``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

REPORT_NAME = "report.json"


def build_report(settings: dict, results: Sequence[dict], parts_reused: int,
                 listing_skips: Sequence[dict] = (), ignored_files: Sequence[str] = ()) -> dict:
    """``listing_skips``: inputs rejected before any part ran (e.g. images without a label); ``ignored_files``:
    files of other types in the input folders, not read (reported, not counted as bad input)."""
    totals: Counter = Counter({"skipped": len(listing_skips)})
    by_subset: Counter = Counter()
    files, skipped = [], list(listing_skips)
    for result in results:
        totals.update(result["counts"])
        by_subset.update(result.get("filtered_by_subset", {}))
        files.extend(result["files"])
        skipped.extend(result["skipped"])
    broken = [{k: f[k] for k in ("file", "error", "lines", "decompressed_bytes", "compressed_bytes_read", "size")}
              for f in files if f.get("error")]
    return {
        "settings": settings,
        "totals": dict(totals),
        "parts": len(results),
        "parts_reused": parts_reused,
        "skipped": skipped,
        "skipped_not_listed": totals.get("skipped", 0) - len(skipped),
        "broken_files": broken,
        "empty_files": [f["file"] for f in files if f.get("empty")],
        "filtered_by_subset": dict(by_subset),
        "ignored_files": list(ignored_files),
        "files": files,
    }


def problems(report: dict) -> list[str]:
    """One line per kind of bad input (empty when the input was clean)."""
    out = []
    n_skipped = report["totals"].get("skipped", 0)
    if n_skipped:
        first = report["skipped"][0] if report["skipped"] else None
        where = f"{first['file']}:{first['line']}" if first and first.get("line") else first and first["file"]
        example = f" (first: {where}: {first['reason']})" if first else ""
        out.append(f"{n_skipped} input records skipped{example}")
    for broken in report["broken_files"]:
        out.append(f"{broken['file']}: {broken['error']}; got {broken['lines']:,} complete lines "
                   f"({broken['decompressed_bytes']:,} bytes decompressed) from {broken['compressed_bytes_read']:,} "
                   f"of its {broken['size']:,} bytes")
    for empty in report["empty_files"]:
        out.append(f"{empty}: empty file")
    return out


def print_summary(split_dir: Path, report: dict, num_samples: int | None) -> None:
    t = report["totals"]
    lines = [f"prepared {split_dir}: {report['parts']} parts ({report['parts_reused']} reused)"]
    if "documents" in t:
        lines.append(f"  documents {t['documents']:,}  tokens {t['tokens']:,} (with one EOS per document)  "
                     f"samples {t['samples']:,}  written tokens {t['written_tokens']:,}")
        lines.append(f"  dropped: {t['dropped_tail_tokens']:,} tail tokens (final partial sample of each part), "
                     f"{t['truncated_tokens']:,} tokens beyond seq_len (--no-pack), "
                     f"{t['filtered']:,} documents of excluded subsets")
    if "images" in t:
        lines.append(f"  images {t['images']:,}: {t['copied']:,} stored as they were, {t['converted']:,} converted "
                     f"to RGB JPEG, {t['resized']:,} resized")
    if num_samples is not None:
        lines.append(f"  merged index: {num_samples:,} samples")
    for problem in problems(report):
        lines.append(f"  problem: {problem}")
    ignored = report.get("ignored_files") or []
    if ignored:
        lines.append(f"  ignored: {len(ignored)} files of other types in the input folders (first: {ignored[0]})")
    if problems(report):
        lines.append(f"  details: {split_dir / REPORT_NAME}")
    print("\n".join(lines), file=sys.stderr)


def finish_split(split_dir: Path, parts, results: Sequence[dict], parts_reused: int, *, settings: dict,
                 strict: bool, merge: Callable, listing_skips: Sequence[dict] = (),
                 ignored_files: Sequence[str] = ()) -> int:
    """Write the report; merge the parts' indexes unless ``--strict`` found bad input, or no input gave a sample
    (then no index.json either: nothing that looks like a dataset). Returns the exit code."""
    report = build_report(settings, results, parts_reused, listing_skips, ignored_files)
    (split_dir / REPORT_NAME).write_text(json.dumps(report, indent=1))
    found = problems(report)
    if strict and found:
        print_summary(split_dir, report, None)
        print(f"m2dist: error: --strict: {len(found)} kinds of bad input (see {split_dir / REPORT_NAME}); "
              f"the split's index.json was not written", file=sys.stderr)
        return 1
    num_samples = merge(split_dir, parts)
    print_summary(split_dir, report, num_samples)
    if not num_samples:
        print(f"m2dist: error: {split_dir}: no input gave a sample ({len(found)} kinds of bad input; see "
              f"{split_dir / REPORT_NAME}); no index.json was written", file=sys.stderr)
        return 1
    return 0
