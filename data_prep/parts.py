"""Running a pipeline as independent parts, in parallel, resumably, and merging them into one MDS index.

Layout of a split being prepared::

    DIR/<split>/part-00000/{index.json, shard.*.mds[.zstd], done.json}
    DIR/<split>/.tmp-part-00003-<pid>/      (a part being written; never read)
    DIR/<split>/index.json                  (the merged index: present only once every part is done)

A part is written into a temporary directory and renamed into place only after its shards and its
``done.json`` (holding the part's key) are complete, so after Ctrl-C or kill -9 a part either exists
completely or not at all. The key hashes the run's settings and the identity (path, size, mtime) of the
part's inputs; a re-run skips parts whose key matches and redoes the rest, so its output is exactly the
output of an uninterrupted run. Parts are defined by the inputs alone (never by ``--workers``), which is
what makes the output independent of the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

DONE_MARKER = "done.json"
MERGED_INDEX = "index.json"


@dataclass
class Part:
    index: int
    # Picklable description of the part's inputs, handed to the part function.
    inputs: Any
    key: str

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


def fingerprint(settings: dict, files: Sequence[str]) -> str:
    """Key of a part: the run's settings plus each input's path, size and modification time."""
    ident = [settings]
    for f in files:
        st = os.stat(f)
        ident.append([str(f), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- progress reporting from workers -------------------------------------------------------------

_progress_queue: Optional[mp.Queue] = None


def _init_worker(q) -> None:
    global _progress_queue
    _progress_queue = q
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class ProgressBars:
    """Two tqdm bars in the main process: parts done, and work units (documents or images) with a rate."""

    def __init__(self, total_parts: int, done_parts: int, unit: str, rate_key: str):
        from tqdm import tqdm

        # disable=None: no bars when stderr is not a terminal (a log file would fill with \r and escape codes);
        # the summary at the end says what was done.
        self.parts = tqdm(total=total_parts, initial=done_parts, desc="parts", unit="part", position=0, disable=None)
        self.units = tqdm(desc=unit, unit=unit[:-1] if unit.endswith("s") else unit, position=1, disable=None)
        self.unit, self.rate_key = unit, rate_key  # (a disabled bar keeps no desc)
        self.rate_total = 0
        self.start = time.monotonic()
        self.lock = threading.Lock()

    def add(self, counts: dict) -> None:
        with self.lock:
            self.units.update(counts.get(self.unit, 0))
            self.rate_total += counts.get(self.rate_key, 0)
            elapsed = max(time.monotonic() - self.start, 1e-9)
            if self.rate_key != self.unit:
                self.units.set_postfix_str(f"{self.rate_total / elapsed:,.0f} {self.rate_key}/s", refresh=False)

    def part_done(self) -> None:
        with self.lock:
            self.parts.update(1)

    def close(self) -> None:
        self.units.close()
        self.parts.close()


class _Reporter:
    """Passed to part functions: ``report(documents=3, tokens=900)`` adds to the progress bars."""

    def __init__(self, bars: Optional[ProgressBars]):
        self.bars = bars

    def __call__(self, **counts) -> None:
        if _progress_queue is not None:
            _progress_queue.put(counts)
        elif self.bars is not None:
            self.bars.add(counts)


# --- running --------------------------------------------------------------------------------------

PartFunction = Callable[[Part, Path, Callable[..., None]], dict]


def _run_one(split_dir: str, part_fn: PartFunction, part: Part, reporter: _Reporter) -> tuple[int, dict]:
    final = Path(split_dir) / part.name
    tmp = Path(split_dir) / f".tmp-{part.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    result = part_fn(part, tmp, reporter)
    tmp.mkdir(parents=True, exist_ok=True)  # a part with no samples may have written nothing
    (tmp / DONE_MARKER).write_text(json.dumps({"key": part.key, "result": result}))
    os.rename(tmp, final)
    return part.index, result


def _run_one_in_worker(args):
    return _run_one(*args, _Reporter(None))


def read_done(part_dir: Path, key: str) -> Optional[dict]:
    marker = part_dir / DONE_MARKER
    try:
        obj = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return obj["result"] if obj.get("key") == key else None


def run_parts(split_dir: Path, parts: Sequence[Part], part_fn: PartFunction, *, workers: int,
              unit: str, rate_key: str, log: logging.Logger) -> tuple[list[dict], int]:
    """Run every part not already done; return (results in part order, number of parts reused)."""
    import streaming  # noqa: F401  (once here, inherited by forked workers: the import takes seconds)

    split_dir.mkdir(parents=True, exist_ok=True)
    # The merged index marks a complete split: remove it first so an interrupted re-run is never readable.
    (split_dir / MERGED_INDEX).unlink(missing_ok=True)
    wanted = {p.name for p in parts}
    for entry in split_dir.iterdir():
        # Leftovers of an interrupted run, and parts of an earlier run over different inputs.
        if entry.is_dir() and (entry.name.startswith(".tmp-part-") or
                               (entry.name.startswith("part-") and entry.name not in wanted)):
            shutil.rmtree(entry)

    results: dict[int, dict] = {}
    todo = []
    for part in parts:
        done = read_done(split_dir / part.name, part.key)
        if done is not None:
            results[part.index] = done
        else:
            shutil.rmtree(split_dir / part.name, ignore_errors=True)
            todo.append(part)
    reused = len(results)
    if reused:
        log.info("%d of %d parts already done (same arguments and inputs); skipping them", reused, len(parts))

    bars = ProgressBars(len(parts), reused, unit, rate_key)
    try:
        if workers <= 1 or len(todo) <= 1:
            reporter = _Reporter(bars)
            for part in todo:
                index, results[part.index] = _run_one(str(split_dir), part_fn, part, reporter)
                bars.part_done()
        else:
            results.update(_run_pool(split_dir, todo, part_fn, workers, bars))
    finally:
        bars.close()
    return [results[p.index] for p in parts], reused


def _run_pool(split_dir: Path, todo: Sequence[Part], part_fn: PartFunction, workers: int,
              bars: ProgressBars) -> dict[int, dict]:
    # fork: workers inherit the imported libraries (streaming's import alone takes seconds).
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    stop = threading.Event()

    def drain():
        while not stop.is_set() or not q.empty():
            try:
                bars.add(q.get(timeout=0.1))
            except queue.Empty:
                pass

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    results = {}
    pool = ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(q,))
    try:
        tasks = [(str(split_dir), part_fn, part) for part in todo]
        for index, result in pool.imap_unordered(_run_one_in_worker, tasks):
            results[index] = result
            bars.part_done()
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        stop.set()
        drainer.join()
    return results


def merge_parts(split_dir: Path, parts: Sequence[Part]) -> int:
    """Write ``split_dir/index.json`` over every part's shards (streaming's ``merge_index``); return #samples.
    With no sample at all, write no index (and remove an earlier one)."""
    from streaming.base.util import merge_index

    index_files = []
    num_samples = 0
    for part in parts:
        index = split_dir / part.name / MERGED_INDEX
        if index.exists():  # a part whose inputs yielded no sample has no index
            index_files.append(str(index))
            num_samples += sum(s["samples"] for s in json.loads(index.read_text())["shards"])
    # merge_index warns about its temporary folder and the non-empty output folder: not news to the user.
    logging.disable(logging.WARNING)
    try:
        if num_samples:
            merge_index(index_files, str(split_dir), keep_local=True)
        else:  # no sample: no index (and none left from an earlier run), so nothing reads this as a dataset
            (split_dir / MERGED_INDEX).unlink(missing_ok=True)
    finally:
        logging.disable(logging.NOTSET)
    return num_samples
