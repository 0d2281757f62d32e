"""Data-prep throughput: ``m2dist prep`` with 1 and 2 workers against a plain single-process loop.

Text: synthetic Pile-format ``.jsonl.zst`` files, a BPE tokenizer trained on them; tokens/s counts every
token written (EOS included). The baseline is the obvious loop: read a file with zstandard's stream
reader, ``json.loads`` each line, ``sp.encode`` it, pack, ``MDSWriter.write``.
Images: a synthetic ImageNet tree of RGB JPEGs; the baseline opens each file with PIL, converts to RGB and
hands the image to ``MDSWriter`` (whose ``jpeg`` encoding re-compresses it).
Times are wall-clock inside this process, after imports, inputs and tokenizer exist.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_prep_bench.py [--docs-per-file 3000 --files 4 --images 1200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.image_prep import prep_imagenet  # noqa: E402
from data_prep.synthetic import pile_lines, synthetic_documents, write_zst  # noqa: E402
from data_prep.text_prep import prep_text  # noqa: E402
from data_prep.tokenizer_training import train_tokenizer  # noqa: E402
from m2dist.data.contract import IMAGE_COLUMN, IMAGE_COLUMNS, LABEL_COLUMN, TOKENS_COLUMN  # noqa: E402


def plain_text_loop(files, tokenizer, out, seq_len) -> int:
    import sentencepiece as spm
    import zstandard
    from streaming import MDSWriter

    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    written = 0
    with MDSWriter(out=out, columns={TOKENS_COLUMN: "ndarray:uint16"}, size_limit="64mb") as writer:
        for path in files:
            buf = []  # each file packed on its own, as prep does (a file is a part)
            with open(path, "rb") as fh:
                reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
                for line in reader:
                    buf += sp.encode(json.loads(line)["text"]) + [sp.eos_id()]
                    while len(buf) >= seq_len:
                        writer.write({TOKENS_COLUMN: np.asarray(buf[:seq_len], dtype=np.uint16)})
                        buf = buf[seq_len:]
                        written += seq_len
    return written


def plain_image_loop(root: Path, out) -> int:
    from PIL import Image
    from streaming import MDSWriter

    wnids = sorted(p.name for p in (root / "train").iterdir())
    n = 0
    with MDSWriter(out=out, columns=IMAGE_COLUMNS, size_limit="64mb") as writer:
        for label, wnid in enumerate(wnids):
            for path in sorted((root / "train" / wnid).iterdir()):
                with Image.open(path) as img:
                    writer.write({IMAGE_COLUMN: img.convert("RGB"), LABEL_COLUMN: label})
                n += 1
    return n


def make_images(root: Path, count: int, classes: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        wnid = f"n{i % classes:08d}"
        path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        base = np.linspace(0, 255, 256 * 192 * 3).reshape(192, 256, 3)
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def cpu_seconds() -> float:
    # This process and its reaped children (the worker pool): the work done, whatever else loads the machine.
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    start, cpu = time.perf_counter(), cpu_seconds()
    value = fn()
    return value, time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--docs-per-file", type=int, default=3000)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--images-per-part", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_prep_bench.json"))
    args = ap.parse_args()

    import streaming  # noqa: F401  (its import takes seconds; keep it out of every timing)

    work = Path(tempfile.mkdtemp(prefix="m2dist-prep-bench-"))
    results: dict = {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "python": platform.python_version(),
                     "load_average_at_start": os.getloadavg()}
    try:
        files = []
        for i in range(args.files):
            docs = synthetic_documents(args.docs_per_file, seed=i, max_words=400)
            files.append(str(write_zst(work / "pile" / f"{i:02d}.jsonl.zst", pile_lines(docs, ["Pile-CC"] * len(docs)))))
        tok, _ = train_tokenizer([str(work / "pile")], "pile", args.vocab_size, str(work / "tok"), sample_docs=2000)

        tokens, secs, cpu = timed(lambda: plain_text_loop(files, tok, str(work / "plain_text"), args.seq_len))
        results["text"] = {"plain_loop": {"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
                                          "cpu_seconds": cpu}}
        for workers in (1, 2):
            out = work / f"prep_text_{workers}"
            rc, secs, cpu = timed(lambda: prep_text("pile", [str(work / "pile")], str(out), tok, args.seq_len,
                                               split="train", workers=workers))
            assert rc == 0
            written = json.loads((out / "train" / "report.json").read_text())["totals"]["written_tokens"]
            assert written == tokens, (written, tokens)  # same tokens as the plain loop: same work measured
            results["text"][f"prep_{workers}_workers"] = {"tokens": written, "seconds": secs,
                                                          "tokens_per_s": written / secs, "cpu_seconds": cpu}

        make_images(work / "imagenet", args.images)
        n, secs, cpu = timed(lambda: plain_image_loop(work / "imagenet", str(work / "plain_img")))
        results["images"] = {"plain_loop": {"images": n, "seconds": secs, "images_per_s": n / secs,
                                            "cpu_seconds": cpu}}
        for workers in (1, 2):
            rc, secs, cpu = timed(lambda: prep_imagenet(str(work / "imagenet"), str(work / f"prep_img_{workers}"),
                                                   workers=workers, images_per_part=args.images_per_part))
            assert rc == 0
            results["images"][f"prep_{workers}_workers"] = {"images": n, "seconds": secs, "images_per_s": n / secs,
                                                            "cpu_seconds": cpu}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
