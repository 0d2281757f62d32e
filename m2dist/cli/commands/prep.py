"""``m2dist prep pile|c4|imagenet|verify|sample``: datasets into MDS shards that ``m2dist.data`` reads."""

from __future__ import annotations

import os


def _text(args) -> int:
    from data_prep.text_prep import prep_text

    return prep_text(args.prep_command, args.input, args.output, args.tokenizer, args.seq_len, split=args.split,
                     workers=args.workers, subsets=getattr(args, "subsets", None),
                     exclude_subsets=getattr(args, "exclude_subsets", None), compression=args.compression,
                     shard_size=args.shard_size, pack=not args.no_pack, strict=args.strict)


def _imagenet(args) -> int:
    from data_prep.image_prep import prep_imagenet

    return prep_imagenet(args.input, args.output, split=args.split, val_labels=args.val_labels,
                         resize=args.resize, quality=args.quality, workers=args.workers,
                         shard_size=args.shard_size, images_per_part=args.images_per_part, strict=args.strict)


def _verify(args) -> int:
    from data_prep.verify import verify

    return verify(args.dir, tokenizer=args.tokenizer, show=args.show)


def _sample(args) -> int:
    from data_prep.sample_corpus import write_sample

    stats = write_sample(args.output)
    out = args.output
    print(f"wrote a sample corpus to {out}: {stats}")
    print("next:\n"
          f"  m2dist tokenizer train --input {out}/pile/train --format pile --vocab-size 1024 --output {out}/tok\n"
          f"  m2dist prep pile --input {out}/pile/train --output {out}/mds/pile --tokenizer {out}/tok.model "
          f"--seq-len 128\n"
          f"  m2dist prep pile --input {out}/pile/val.jsonl.zst --split val --output {out}/mds/pile "
          f"--tokenizer {out}/tok.model --seq-len 128\n"
          f"  m2dist prep imagenet --input {out}/imagenet --output {out}/mds/imagenet --split train")
    return 0


def _common(p, *, split_default: str = "train") -> None:
    p.add_argument("--output", required=True, metavar="DIR", help="dataset root; the split goes to DIR/<split>/")
    p.add_argument("--split", default=split_default, help=f"split folder name (default: {split_default})")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="parallel workers over groups of input files (default: min(8, cores))")
    p.add_argument("--shard-size", default="64mb", help="MDS shard size limit (default: 64mb)")
    p.add_argument("--strict", action="store_true",
                   help="fail (non-zero exit, no index.json) on any skipped line, truncated or empty file")


def register(subparsers) -> None:
    parser = subparsers.add_parser("prep", help="prepare datasets (The Pile, C4, ImageNet) as MDS shards")
    sub = parser.add_subparsers(dest="prep_command", metavar="DATASET", required=True)
    for name, what in (("pile", "The Pile (*.jsonl.zst)"), ("c4", "C4 (*.json.gz)")):
        p = sub.add_parser(name, help=f"tokenize and pack {what}")
        p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or directories")
        p.add_argument("--tokenizer", required=True, metavar="TOK.model", help="sentencepiece model")
        p.add_argument("--seq-len", type=int, required=True, help="tokens per sample")
        p.add_argument("--compression", choices=["zstd"], default=None, help="compress shards (default: none)")
        p.add_argument("--no-pack", action="store_true",
                       help="one document per sample, cut to --seq-len (the M2-BERT MLM recipe); default packs")
        if name == "pile":
            p.add_argument("--subsets", default=None, help="keep only these pile_set_name values (comma-separated)")
            p.add_argument("--exclude-subsets", default=None, help="drop these pile_set_name values")
        _common(p)
        p.set_defaults(func=_text)
    p = sub.add_parser("imagenet", help="ImageNet folders into jpeg/label shards")
    p.add_argument("--input", required=True, metavar="ROOT", help="folder with train/<wnid>/ and val/")
    p.add_argument("--val-labels", default=None, metavar="FILE",
                   help="labels of a flat val/: LOC_val_solution.csv or one wnid per image in sorted order "
                        "(default: look for LOC_val_solution.csv)")
    p.add_argument("--resize", type=int, default=None, metavar="SHORT_SIDE",
                   help="shrink images whose short side is longer (default: keep sizes)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of converted images (default: 90)")
    p.add_argument("--images-per-part", type=int, default=1000,
                   help="images per resumable part, the unit of parallel work (default: 1000)")
    _common(p)
    p.set_defaults(func=_imagenet)
    p = sub.add_parser("verify", help="check shards against their index, count and decode samples")
    p.add_argument("dir", help="a prepared dataset root or one split folder")
    p.add_argument("--tokenizer", default=None, help="decode token samples with this model and check id range")
    p.add_argument("--show", type=int, default=2, help="samples to decode and print per split")
    p.set_defaults(func=_verify)
    p = sub.add_parser("sample", help="write a small embedded corpus in the real Pile / C4 / ImageNet formats")
    p.add_argument("--output", required=True, metavar="DIR")
    p.set_defaults(func=_sample)
