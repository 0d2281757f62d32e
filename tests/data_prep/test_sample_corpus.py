"""``m2dist prep sample``: real formats, deterministic, and the quickstart chain runs on it."""

from __future__ import annotations

import gzip
import hashlib
import json

import zstandard
from PIL import Image


def digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_formats_determinism_and_quickstart_chain(tmp_path, cli, read_split):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("prep", "sample", "--output", a) == 0
    assert cli("prep", "sample", "--output", b) == 0
    assert digest(a) == digest(b)

    raw = zstandard.ZstdDecompressor().decompressobj().decompress((a / "pile/train/00.jsonl.zst").read_bytes())
    first = json.loads(raw.split(b"\n")[0])
    assert set(first) == {"text", "meta"} and first["meta"]["pile_set_name"]
    with gzip.open(a / "c4/c4-validation.00000-of-00008.json.gz") as fh:
        assert set(json.loads(fh.readline())) == {"text", "timestamp", "url"}
    kinds = set()
    for p in (a / "imagenet/train").rglob("*.JPEG"):
        with Image.open(p) as img:
            kinds.add((img.format, img.mode))
    assert {("PNG", "RGB"), ("JPEG", "CMYK"), ("JPEG", "L"), ("JPEG", "RGB")} <= kinds

    assert cli("tokenizer", "train", "--input", a / "pile/train", "--format", "pile", "--vocab-size", 512,
               "--output", a / "tok") == 0
    assert cli("prep", "pile", "--input", a / "pile/train", "--output", a / "mds/pile", "--tokenizer",
               a / "tok.model", "--seq-len", 128, "--workers", 2) == 0
    assert cli("prep", "c4", "--input", a / "c4/c4-validation.00000-of-00008.json.gz", "--split", "val",
               "--output", a / "mds/c4", "--tokenizer", a / "tok.model", "--seq-len", 128, "--no-pack") == 0
    assert cli("prep", "imagenet", "--input", a / "imagenet", "--output", a / "mds/imagenet") == 0
    assert cli("prep", "imagenet", "--input", a / "imagenet", "--output", a / "mds/imagenet", "--split", "val") == 0
    for d in ("pile", "c4", "imagenet"):
        assert cli("prep", "verify", a / "mds" / d) == 0
    assert len(read_split(a / "mds/pile/train")) > 500
