"""``m2dist prep imagenet``: ImageNet folders into MDS with columns ``image`` (jpeg) and ``label`` (int).

Class index = position of the wnid in the sorted list of ``ROOT/train`` folders, written once to
``DIR/classes.json``. ``val/`` may hold class folders, or be flat with a labels file
(``LOC_val_solution.csv``, or a text file of one wnid per image in sorted file order). Real RGB JPEGs are
stored byte for byte (no second lossy compression); anything else that PIL can read (PNGs named .JPEG,
CMYK or grayscale JPEGs) is converted to an RGB JPEG; unreadable files are skipped and reported.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from data_prep.parts import Part, fingerprint, merge_parts, run_parts
from data_prep.report import finish_split
from m2dist.config.loader import ConfigError
from m2dist.data.contract import IMAGE_COLUMN, IMAGE_COLUMNS, LABEL_COLUMN

log = logging.getLogger("data_prep")

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
CLASSES_FILE = "classes.json"
VAL_SOLUTION = "LOC_val_solution.csv"
# Parts are fixed-size runs of the sorted (class, file) list, so they do not depend on --workers.
DEFAULT_IMAGES_PER_PART = 1000


@dataclass(frozen=True)
class ImagePrepSettings:
    resize: Optional[int]
    quality: int
    shard_size: str


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def train_wnids(root: Path) -> list[str]:
    train = root / "train"
    if not train.is_dir():
        raise ConfigError(f"{train}: missing; the class list is the sorted list of its wnid folders")
    wnids = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not wnids:
        raise ConfigError(f"{train}: no class folders")
    return wnids


def _labels_file_mapping(labels_file: Path, images: list[Path]) -> dict[str, str]:
    """file name -> wnid, from LOC_val_solution.csv or from a one-wnid-per-line file in sorted file order."""
    if labels_file.suffix == ".csv":
        mapping = {}
        with open(labels_file, newline="") as fh:
            for row_no, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    mapping[row["ImageId"]] = row["PredictionString"].split()[0]
                except (KeyError, IndexError, AttributeError):
                    raise ConfigError(f"{labels_file}:{row_no}: expected columns ImageId,PredictionString "
                                      f"with a wnid first") from None
        return {img.name: mapping[img.stem] for img in images if img.stem in mapping}
    wnids = [w.strip() for w in labels_file.read_text().splitlines() if w.strip()]
    if len(wnids) != len(images):
        raise ConfigError(f"{labels_file}: {len(wnids)} labels for {len(images)} images "
                          f"(expected one wnid per image, in sorted file order)")
    return {img.name: w for img, w in zip(images, wnids)}


def list_split(root: Path, split: str, wnids: list[str], val_labels: Optional[str]):
    """Return ([(path, label)], [skipped entries]) for ``root/split``, sorted by class then file."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise ConfigError(f"{split_dir}: no such directory")
    index = {w: i for i, w in enumerate(wnids)}
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    items, skipped = [], []
    if class_dirs:
        for d in class_dirs:
            if d.name not in index:
                skipped.append({"file": str(d), "line": None, "reason": f"class folder {d.name} is not a train class"})
                continue
            items.extend((str(p), index[d.name]) for p in sorted(d.iterdir()) if _is_image(p))
        return items, skipped
    images = sorted(p for p in split_dir.iterdir() if _is_image(p))
    if val_labels is None:
        for candidate in (split_dir / VAL_SOLUTION, root / VAL_SOLUTION, root.parent / VAL_SOLUTION):
            if candidate.is_file():
                val_labels = str(candidate)
                break
        else:
            raise ConfigError(f"{split_dir}: flat folder without class folders; pass --val-labels "
                              f"({VAL_SOLUTION} or a file of one wnid per image)")
    mapping = _labels_file_mapping(Path(val_labels), images)
    for img in images:
        wnid = mapping.get(img.name)
        if wnid is None:
            skipped.append({"file": str(img), "line": None, "reason": f"no label in {val_labels}"})
        elif wnid not in index:
            skipped.append({"file": str(img), "line": None, "reason": f"label {wnid} is not a train class"})
        else:
            items.append((str(img), index[wnid]))
    items.sort(key=lambda it: (it[1], it[0]))
    return items, skipped


def jpeg_bytes(path: str, resize: Optional[int], quality: int) -> tuple[bytes, str]:
    """The RGB JPEG to store for ``path``, and what was done: ``copied``, ``converted`` or ``resized``.

    Raises ``OSError``/``ValueError`` (PIL's errors) for files that cannot be decoded.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decode fully: a truncated or corrupt file fails here, not later in training
        short = min(img.size)
        needs_resize = resize is not None and short > resize
        if img.format == "JPEG" and img.mode == "RGB" and not needs_resize:
            return Path(path).read_bytes(), "copied"
        action = "resized" if needs_resize else "converted"
        rgb = img.convert("RGB")
    if needs_resize:
        w, h = rgb.size
        rgb = rgb.resize((max(1, round(w * resize / short)), max(1, round(h * resize / short))),
                         Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue(), action


def _jpeg_bytes_writer_class():
    from streaming import MDSWriter
    from streaming.base.format.mds.encodings import mds_encode

    class JpegBytesMDSWriter(MDSWriter):
        """An MDSWriter whose ``jpeg`` columns take ready JPEG bytes.

        streaming's ``jpeg`` encoding re-saves any PIL image it is given (at quality 75), which would
        compress every image a second time; the stored format (the JPEG file's bytes) is the same.
        """

        def encode_sample(self, sample):
            sizes, data = [], []
            for key, encoding, size in zip(self.column_names, self.column_encodings, self.column_sizes):
                value = sample[key]
                datum = value if encoding == "jpeg" and isinstance(value, bytes) else mds_encode(encoding, value)
                if size is None:
                    sizes.append(len(datum))
                data.append(datum)
            return np.array(sizes, np.uint32).tobytes() + b"".join(data)

    return JpegBytesMDSWriter


def prep_image_part(settings: ImagePrepSettings, part: Part, out_dir: Path, report) -> dict:
    from PIL import Image

    writer_cls = _jpeg_bytes_writer_class()
    counts = {"images": 0, "copied": 0, "converted": 0, "resized": 0, "skipped": 0}
    per_class: dict[str, int] = {}
    skipped = []
    with writer_cls(out=str(out_dir), columns=IMAGE_COLUMNS, hashes=["sha1"],
                    size_limit=settings.shard_size) as writer:
        for path, label in part.inputs:
            try:
                data, action = jpeg_bytes(path, settings.resize, settings.quality)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                counts["skipped"] += 1
                skipped.append({"file": path, "line": None, "reason": f"unreadable image: {exc}"})
                continue
            writer.write({IMAGE_COLUMN: data, LABEL_COLUMN: label})
            counts["images"] += 1
            counts[action] += 1
            per_class[str(label)] = per_class.get(str(label), 0) + 1
            report(images=1)
    return {"counts": counts, "files": [], "skipped": skipped, "images_per_label": per_class}


def write_classes(output: Path, wnids: list[str]) -> None:
    path = output / CLASSES_FILE
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != wnids:
            raise ConfigError(f"{path}: holds a different class list than {len(wnids)} train wnids of this input; "
                              f"use a fresh --output")
        return
    output.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(wnids, indent=0))
    tmp.rename(path)


def prep_imagenet(root: str, output: str, *, split: str = "train", val_labels: Optional[str] = None,
                  resize: Optional[int] = None, quality: int = 90, workers: int = 1, shard_size: str = "64mb",
                  images_per_part: int = DEFAULT_IMAGES_PER_PART, strict: bool = False) -> int:
    root_p, out_p = Path(root), Path(output)
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {quality}")
    if workers < 1 or images_per_part < 1:
        raise ConfigError(f"--workers and --images-per-part must be at least 1, got {workers} and {images_per_part}")
    wnids = train_wnids(root_p)
    items, listing_skips = list_split(root_p, split, wnids, val_labels)
    write_classes(out_p, wnids)
    settings = ImagePrepSettings(resize=resize, quality=quality, shard_size=shard_size)
    parts = []
    for i in range(0, max(len(items), 1), images_per_part):
        chunk = items[i:i + images_per_part]
        key = fingerprint({**asdict(settings), "labels": [label for _, label in chunk]}, [p for p, _ in chunk])
        parts.append(Part(len(parts), chunk, key))
    split_dir = out_p / split
    log.info("imagenet %s: %d images in %d classes -> %s (%d workers)", split, len(items), len(wnids), split_dir,
             workers)
    results, reused = run_parts(split_dir, parts, functools.partial(prep_image_part, settings), workers=workers,
                                unit="images", rate_key="images", log=log)
    return finish_split(split_dir, parts, results, reused, listing_skips=listing_skips,
                        settings={**asdict(settings), "root": str(root_p.resolve()), "split": split,
                                  "classes": len(wnids)},
                        strict=strict, merge=merge_parts)
