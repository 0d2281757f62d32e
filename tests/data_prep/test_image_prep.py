"""``m2dist prep imagenet``: the sorted-wnid labels, odd files converted, unreadable files reported."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.sample_corpus import WNIDS, write_images


@pytest.fixture
def imagenet(tmp_path) -> Path:
    write_images(tmp_path)
    root = tmp_path / "imagenet"
    (root / "train" / WNIDS[1] / f"{WNIDS[1]}_90.JPEG").write_bytes(b"this is not an image")
    real = (root / "train" / WNIDS[2] / f"{WNIDS[2]}_3.JPEG").read_bytes()
    (root / "train" / WNIDS[2] / f"{WNIDS[2]}_91.JPEG").write_bytes(real[: len(real) // 2])
    return root


def pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_train_labels_conversions_and_report(imagenet, tmp_path, cli, read_split):
    out = tmp_path / "mds"
    assert cli("prep", "imagenet", "--input", imagenet, "--output", out, "--workers", 2) == 0
    assert json.loads((out / "classes.json").read_text()) == sorted(WNIDS)
    samples = read_split(out / "train")
    readable = [(i, p) for i, w in enumerate(sorted(WNIDS))
                for p in sorted((imagenet / "train" / w).iterdir()) if not p.stem.endswith(("_90", "_91"))]
    assert [int(s["label"]) for s in samples] == [i for i, _ in readable]
    for sample, (_, path) in zip(samples, readable):
        img = sample["image"]
        assert img.format == "JPEG" and img.mode == "RGB"
        with Image.open(path) as orig:
            if orig.format == "JPEG" and orig.mode == "RGB":  # stored byte for byte
                assert (pixels(img) == pixels(orig)).all()
            else:  # PNG named .JPEG, CMYK, grayscale: exactly PIL's RGB conversion saved at --quality 90
                assert orig.format == "PNG" or orig.mode in ("CMYK", "L")
                buf = io.BytesIO()
                orig.convert("RGB").save(buf, format="JPEG", quality=90)
                assert (pixels(img) == pixels(Image.open(buf))).all()
    report = json.loads((out / "train" / "report.json").read_text())
    reasons = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {f"{WNIDS[1]}_90.JPEG", f"{WNIDS[2]}_91.JPEG"}
    assert all(r.startswith("unreadable image") for r in reasons.values())
    assert report["totals"]["converted"] == 3 and report["totals"]["images"] == len(samples)
    assert cli("prep", "imagenet", "--input", imagenet, "--output", out, "--strict") == 1


def test_flat_val_with_solution_csv_or_wnid_list(imagenet, tmp_path, cli, read_split):
    rows = (imagenet / "LOC_val_solution.csv").read_text().splitlines()[1:]
    by_stem = {r.split(",")[0]: r.split(",")[1].split()[0] for r in rows}
    files = sorted((imagenet / "val").iterdir())
    expected = sorted((sorted(WNIDS).index(by_stem[p.stem]), str(p)) for p in files)

    out = tmp_path / "csv"
    assert cli("prep", "imagenet", "--input", imagenet, "--output", out, "--split", "val", "--workers", 1) == 0
    assert [int(s["label"]) for s in read_split(out / "val")] == [label for label, _ in expected]

    wnid_list = tmp_path / "val_labels.txt"
    wnid_list.write_text("\n".join(by_stem[p.stem] for p in files) + "\n")
    out2 = tmp_path / "txt"
    assert cli("prep", "imagenet", "--input", imagenet, "--output", out2, "--split", "val",
               "--val-labels", wnid_list, "--resize", 20, "--workers", 1) == 0
    samples = read_split(out2 / "val")
    assert [int(s["label"]) for s in samples] == [label for label, _ in expected]
    assert all(min(s["image"].size) == 20 for s in samples)

    assert cli("prep", "verify", out) == 0


def test_val_in_class_folders_and_label_count_mismatch(imagenet, tmp_path, cli, read_split, capsys):
    for p in sorted((imagenet / "val").iterdir()):
        (imagenet / "val" / WNIDS[0]).mkdir(exist_ok=True)
        p.rename(imagenet / "val" / WNIDS[0] / p.name)
    out = tmp_path / "mds"
    assert cli("prep", "imagenet", "--input", imagenet, "--output", out, "--split", "val", "--workers", 1) == 0
    assert {int(s["label"]) for s in read_split(out / "val")} == {sorted(WNIDS).index(WNIDS[0])}

    flat = tmp_path / "flat"
    (flat / "train" / WNIDS[0]).mkdir(parents=True)
    (flat / "val").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "val" / "a.JPEG")
    (flat / "labels.txt").write_text(f"{WNIDS[0]}\n{WNIDS[0]}\n")
    assert cli("prep", "imagenet", "--input", flat, "--output", tmp_path / "o", "--split", "val",
               "--val-labels", flat / "labels.txt") == 2
    assert "2 labels for 1 images" in capsys.readouterr().err
