from pathlib import Path

import sentencepiece as spm

from data_prep.synthetic import c4_lines, synthetic_documents, write_gz
from m2dist.data.tokenizer import tokenizer_info

TRICKY = "naïve Zürich 東京 🙂 e\u0301  two  spaces\n\ttab ﬁ ☃ Ünseen ✓ \u200b zero-width"


def test_special_ids_and_byte_fallback_round_trip(tokenizer):
    info = tokenizer_info(tokenizer)
    assert (info.pad_id, info.bos_id, info.eos_id, info.mask_id) == (0, 2, 3, 4)
    assert info.vocab_size == 400
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    ids = sp.encode(TRICKY)
    assert sp.unk_id() not in ids  # characters never seen in training go through byte pieces
    assert sp.decode(ids) == TRICKY
    # <mask> is a control symbol: the literal text cannot produce it
    assert info.mask_id not in sp.encode("<mask>")


def test_unigram_on_c4_with_sample_docs(tmp_path, cli):
    docs = synthetic_documents(200, seed=5)
    write_gz(tmp_path / "c4-train.00000-of-01024.json.gz", c4_lines(docs))
    assert cli("tokenizer", "train", "--input", tmp_path, "--format", "c4", "--vocab-size", 320,
                   "--model-type", "unigram", "--sample-docs", 100, "--output", tmp_path / "uni") == 0
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "uni.model"))
    assert sp.decode(sp.encode(TRICKY)) == TRICKY
    assert Path(tmp_path / "uni.vocab").is_file()


def test_too_small_vocab_is_a_one_line_error(tmp_path, capsys, cli):
    (tmp_path / "a.txt").write_text("hello world\n")
    assert cli("tokenizer", "train", "--input", tmp_path / "a.txt", "--format", "text", "--vocab-size", 100,
                   "--output", tmp_path / "t") == 2
    assert "--vocab-size 100 is too small" in capsys.readouterr().err
