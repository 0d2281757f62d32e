"""``m2dist prep sample``: a small corpus in the real formats, made from what every Python install has.

Text: the docstrings of a fixed list of standard-library modules (and of their public functions, classes
and methods), a few thousand documents. They are written as Pile-style ``pile/train/00.jsonl.zst``,
``01.jsonl.zst`` and ``pile/val.jsonl.zst`` (each module gets a ``meta.pile_set_name``), and as C4-style
``c4/c4-train.0000N-of-01024.json.gz`` / ``c4/c4-validation.00000-of-00008.json.gz``.
Images: ``imagenet/train/<wnid>/<wnid>_<n>.JPEG`` for 3 classes and a flat ``imagenet/val/`` with
``LOC_val_solution.csv``; among them a PNG named .JPEG, a CMYK JPEG and a grayscale JPEG.
Everything is deterministic for a given Python and Pillow (no randomness without a fixed seed, sorted order).
"""

from __future__ import annotations

import gzip
import importlib
import io
import inspect
import json
import os
import warnings
from pathlib import Path

import numpy as np

MODULES = [
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "enum", "fractions", "functools", "gzip", "hashlib", "heapq", "html", "http.client",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "math", "mimetypes", "operator", "os",
    "pathlib", "pickle", "pprint", "queue", "random", "re", "shlex", "shutil", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time",
    "tokenize", "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "xml.etree.ElementTree",
    "zipfile",
]
PILE_SETS = ["Pile-CC", "Github", "StackExchange", "Wikipedia (en)", "ArXiv"]
WNIDS = ["n01440764", "n01443537", "n01484850"]


def stdlib_documents() -> list[tuple[str, str]]:
    """(module, docstring) pairs, de-duplicated, in a fixed order."""
    seen, docs = set(), []

    def add(module_name, obj):
        doc = inspect.getdoc(obj)
        if doc and len(doc) > 40 and doc not in seen:
            seen.add(doc)
            docs.append((module_name, doc))

    with warnings.catch_warnings():
        # Reading attributes of some modules (typing.io, typing.re) warns about deprecations.
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in MODULES:
            _module_documents(name, add)
    return docs


def _module_documents(name: str, add) -> None:
    """The module's docstring, then those of its own public functions, classes and their methods."""
    mod = importlib.import_module(name)
    add(name, mod)
    for attr in sorted(vars(mod)):
        if attr.startswith("_"):
            continue
        obj = getattr(mod, attr)
        if getattr(obj, "__module__", None) != mod.__name__:
            continue  # re-exports belong to their own module
        add(name, obj)
        if inspect.isclass(obj):
            for meth in sorted(vars(obj)):
                if not meth.startswith("_"):
                    add(name, vars(obj)[meth])


def _put(path: Path, data: bytes) -> None:
    """Write ``data`` unless the file already holds exactly it: an unchanged file keeps its modification time, which
    prep's part keys include, so re-running the quickstart reuses the MDS parts made from it."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_zst_jsonl(path: Path, records: list[dict]) -> None:
    import zstandard

    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    _put(path, zstandard.ZstdCompressor(level=3).compress(data))


def _write_gz_jsonl(path: Path, records: list[dict]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    # mtime=0: the gzip header would otherwise carry the time of the run.
    _put(path, gzip.compress(data, mtime=0))


def _put_image(img, path: Path, **save) -> None:
    buf = io.BytesIO()
    img.save(buf, **save)
    _put(path, buf.getvalue())


def write_text_corpora(output: Path) -> dict:
    docs = stdlib_documents()
    sets = {m: PILE_SETS[i % len(PILE_SETS)] for i, m in enumerate(MODULES)}
    train = [d for i, d in enumerate(docs) if i % 10 != 9]
    val = [d for i, d in enumerate(docs) if i % 10 == 9]

    def pile(rows):
        return [{"text": text, "meta": {"pile_set_name": sets[m]}} for m, text in rows]

    def c4(rows, offset):
        return [{"text": text, "timestamp": f"2019-04-{1 + (offset + i) % 28:02d}T00:00:00Z",
                 "url": f"https://docs.python.org/3/library/{m}.html#{offset + i}"}
                for i, (m, text) in enumerate(rows)]

    half = len(train) // 2
    _write_zst_jsonl(output / "pile/train/00.jsonl.zst", pile(train[:half]))
    _write_zst_jsonl(output / "pile/train/01.jsonl.zst", pile(train[half:]))
    _write_zst_jsonl(output / "pile/val.jsonl.zst", pile(val))
    _write_gz_jsonl(output / "c4/c4-train.00000-of-01024.json.gz", c4(train[:half], 0))
    _write_gz_jsonl(output / "c4/c4-train.00001-of-01024.json.gz", c4(train[half:], half))
    _write_gz_jsonl(output / "c4/c4-validation.00000-of-00008.json.gz", c4(val, len(train)))
    return {"train_documents": len(train), "val_documents": len(val)}


def _picture(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """A class-dependent pattern (one dominant colour channel, stripes) plus noise: learnable, not blank."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    img[..., cls % 3] = 160 + 60 * np.sin((x + 2 * y) / (3 + cls))
    img += rng.normal(0, 20, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(output: Path, per_class: int = 6, val_per_class: int = 2) -> dict:
    from PIL import Image

    rng = np.random.default_rng(0)
    root = output / "imagenet"
    for c, wnid in enumerate(WNIDS):
        for n in range(per_class):
            path = root / "train" / wnid / f"{wnid}_{n + 1}.JPEG"
            img = Image.fromarray(_picture(rng, c, 40 + 4 * n, 56 - 2 * n))
            if c == 0 and n == 0:
                _put_image(img, path, format="PNG")  # a PNG with a .JPEG name
            elif c == 1 and n == 0:
                _put_image(img.convert("CMYK"), path, format="JPEG", quality=90)
            elif c == 2 and n == 0:
                _put_image(img.convert("L"), path, format="JPEG", quality=90)
            else:
                _put_image(img, path, format="JPEG", quality=90)
    rows = ["ImageId,PredictionString"]
    for i in range(len(WNIDS) * val_per_class):
        c = (i * 2) % len(WNIDS)  # labels not in file order, as in the real val set
        stem = f"ILSVRC2012_val_{i + 1:08d}"
        _put_image(Image.fromarray(_picture(rng, c, 48, 48)), root / "val" / f"{stem}.JPEG", format="JPEG",
                   quality=90)
        rows.append(f"{stem},{WNIDS[c]} 1 2 40 40 ")
    _put(root / "LOC_val_solution.csv", ("\n".join(rows) + "\n").encode())
    return {"classes": len(WNIDS), "train_images": len(WNIDS) * per_class, "val_images": len(WNIDS) * val_per_class}


def write_sample(output: str) -> dict:
    out = Path(output)
    stats = write_text_corpora(out)
    stats.update(write_images(out))
    return stats
