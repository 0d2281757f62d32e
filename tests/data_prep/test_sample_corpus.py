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


def test_rerunning_the_data_steps_reuses_every_part(tmp_path, cli):
    """Issue 14.11: the README says a re-run of the quickstart skips the finished data steps; `prep sample` rewrote
    its files (same bytes, new modification times, which the part keys include), so every part was redone."""
    out = tmp_path / "s"

    def data_steps():
        assert cli("prep", "sample", "--output", out) == 0
        assert cli("tokenizer", "train", "--input", out / "pile/train", "--format", "pile", "--vocab-size", 512,
                   "--output", out / "tok") == 0
        assert cli("prep", "pile", "--input", out / "pile/train", "--output", out / "mds/pile", "--tokenizer",
                   out / "tok.model", "--seq-len", 128, "--workers", 1) == 0
        assert cli("prep", "imagenet", "--input", out / "imagenet", "--output", out / "mds/imagenet",
                   "--workers", 1) == 0
        return {d: json.loads((out / "mds" / d / "train" / "report.json").read_text()) for d in ("pile", "imagenet")}

    first = data_steps()
    times = {p: p.stat().st_mtime_ns for p in (out / "pile").rglob("*") if p.is_file()}
    again = data_steps()
    assert {p: p.stat().st_mtime_ns for p in times} == times
    for d in ("pile", "imagenet"):
        assert first[d]["parts_reused"] == 0 and again[d]["parts_reused"] == again[d]["parts"] > 0, (d, again[d])
