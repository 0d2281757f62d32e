"""``m2dist tokenizer train``: a sentencepiece tokenizer with m2dist's special tokens and byte fallback."""

from __future__ import annotations


def _train(args) -> int:
    from data_prep.tokenizer_training import train_tokenizer
    from m2dist.data.tokenizer import tokenizer_info

    model, vocab = train_tokenizer(args.input, args.format, args.vocab_size, args.output,
                                   model_type=args.model_type, sample_docs=args.sample_docs)
    info = tokenizer_info(model)
    print(f"wrote {model} and {vocab}: {info.vocab_size} pieces (pad {info.pad_id}, bos {info.bos_id}, "
          f"eos {info.eos_id}, mask {info.mask_id}, byte fallback)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train sentencepiece tokenizers")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a sentencepiece model on Pile / C4 / text files")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or directories")
    train.add_argument("--format", choices=["pile", "c4", "text"], required=True,
                       help="pile: *.jsonl.zst; c4: *.json.gz; text: one document per line")
    train.add_argument("--vocab-size", type=int, required=True, help="number of pieces (at least 262)")
    train.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    train.add_argument("--sample-docs", type=int, default=None,
                       help="train on this many documents, taken evenly across files (default: all)")
    train.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.vocab")
    train.set_defaults(func=_train)
