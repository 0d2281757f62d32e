"""``m2dist prep pile|c4`` against independent computations: the tokenizer's own count and decoding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data_prep.synthetic import c4_lines, pile_lines, synthetic_documents, truncate, write_gz, write_zst

SETS = ["Pile-CC", "Github", "ArXiv"]
REPO = Path(__file__).resolve().parents[2]


def make_pile(root: Path, sizes=(120, 80, 50), seed=0) -> list[list[tuple[str, str]]]:
    """Pile files ``root/NN.jsonl.zst``; returns the (text, subset) documents of each file in order."""
    files = []
    for i, n in enumerate(sizes):
        docs = synthetic_documents(n, seed=seed + i)
        sets = [SETS[(i + j) % len(SETS)] for j in range(n)]
        write_zst(root / f"{i:02d}.jsonl.zst", pile_lines(docs, sets), frames=3 if i == 0 else 1)
        files.append(list(zip(docs, sets)))
    return files


def expected_packed(sp, docs, seq_len):
    """Samples and first-document sources of one part, computed here without the pipeline."""
    stream, starts = [], []
    for text, source in docs:
        starts.append((len(stream), source))
        stream += sp.encode(text) + [sp.eos_id()]
    n = len(stream) // seq_len
    samples = [stream[k * seq_len:(k + 1) * seq_len] for k in range(n)]
    sources = [[s for pos, s in starts if pos <= k * seq_len][-1] for k in range(n)]
    return samples, sources, len(stream), len(stream) - n * seq_len


def decoded_documents(sp, samples):
    """Concatenate samples, split at EOS, decode: the documents that made it into the output."""
    stream = np.concatenate([s["tokens"] for s in samples]).tolist() if samples else []
    docs, cur = [], []
    for t in stream:
        if t == sp.eos_id():
            docs.append(sp.decode(cur))
            cur = []
        else:
            cur.append(t)
    return docs


def test_pile_counts_decoding_sources_and_dtype(tmp_path, tokenizer, cli, read_split):
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    files = make_pile(tmp_path / "pile" / "train")
    out = tmp_path / "mds"
    assert cli("prep", "pile", "--input", tmp_path / "pile" / "train", "--output", out, "--tokenizer", tokenizer,
               "--seq-len", 64, "--workers", 2) == 0
    samples = read_split(out / "train")
    expected, sources, total_tokens, dropped = [], [], 0, 0
    for docs in files:  # one part per input file, in sorted file order
        s, src, n, d = expected_packed(sp, docs, 64)
        expected += s
        sources += src
        total_tokens += n
        dropped += d
    assert [s["tokens"].tolist() for s in samples] == expected
    assert [s["source"] for s in samples] == sources
    assert all(s["tokens"].dtype == np.uint16 for s in samples)
    report = json.loads((out / "train" / "report.json").read_text())
    assert report["totals"]["tokens"] == total_tokens == sum(len(sp.encode(t)) + 1 for f in files for t, _ in f)
    assert report["totals"]["written_tokens"] == total_tokens - dropped == 64 * len(samples)
    # Per part, every document that ends before the dropped tail decodes back to its exact text.
    start = 0
    for docs in files:
        n = len(expected_packed(sp, docs, 64)[0])
        out_docs = decoded_documents(sp, samples[start:start + n])
        start += n
        ends = np.cumsum([len(sp.encode(t)) + 1 for t, _ in docs])
        complete = int((ends <= n * 64).sum())
        assert complete >= len(docs) - 3
        assert out_docs == [t for t, _ in docs[:complete]]


def test_pile_subset_filters(tmp_path, tokenizer, cli, read_split):
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    files = make_pile(tmp_path / "in", sizes=(60, 60))
    out = tmp_path / "mds"
    assert cli("prep", "pile", "--input", tmp_path / "in", "--output", out, "--tokenizer", tokenizer,
               "--seq-len", 32, "--workers", 1, "--subsets", "Github,ArXiv", "--exclude-subsets", "ArXiv") == 0
    samples = read_split(out / "train")
    expected = []
    for docs in files:
        expected += expected_packed(sp, [d for d in docs if d[1] == "Github"], 32)[0]
    assert [s["tokens"].tolist() for s in samples] == expected
    assert {s["source"] for s in samples} == {"Github"}
    report = json.loads((out / "train" / "report.json").read_text())
    n_other = sum(1 for f in files for _, s in f if s != "Github")
    assert report["totals"]["filtered"] == n_other
    assert set(report["filtered_by_subset"]) == {"Pile-CC", "ArXiv"}


def test_c4_gzip_one_document_per_sample(tmp_path, tokenizer, cli, read_split):
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    docs = synthetic_documents(70, seed=9)
    write_gz(tmp_path / "c4" / "c4-validation.00000-of-00008.json.gz", c4_lines(docs))
    out = tmp_path / "mds"
    assert cli("prep", "c4", "--input", tmp_path / "c4", "--output", out, "--split", "val", "--tokenizer",
               tokenizer, "--seq-len", 48, "--no-pack", "--workers", 1) == 0
    samples = read_split(out / "val")
    expected = [(sp.encode(d) + [sp.eos_id()])[:48] for d in docs]
    assert [s["tokens"].tolist() for s in samples] == expected
    assert "source" not in samples[0]
    short = [sp.decode(e[:-1]) for e in expected if len(e) < 48]
    assert short and all(text in docs for text in short)


def test_bad_lines_empty_and_truncated_files_are_reported(tmp_path, tokenizer, cli, read_split, capsys):
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    good = synthetic_documents(40, seed=1)
    lines = pile_lines(good, ["Github"] * 40)
    bad = {3: b'{"text": "unterminated', 7: b"not json at all", 11: b'{"meta": {"pile_set_name": "x"}}',
           15: b'{"text": ""}', 19: b'{"text": "   \\n "}', 23: b"\xff\xfe{}", 27: b'{"text": 5}'}
    for line_no in sorted(bad):  # 1-based line numbers in the final file
        lines.insert(line_no - 1, bad[line_no])
    src = tmp_path / "in"
    write_zst(src / "a.jsonl.zst", lines)
    (src / "b.jsonl.zst").write_bytes(b"")  # an empty file
    cut_docs = synthetic_documents(300, seed=2)
    cut = write_zst(src / "c.jsonl.zst", pile_lines(cut_docs, ["ArXiv"] * 300))
    size_before = cut.stat().st_size
    truncate(cut, 0.5)

    out = tmp_path / "mds"
    assert cli("prep", "pile", "--input", src, "--output", out, "--tokenizer", tokenizer, "--seq-len", 32,
               "--workers", 2) == 0
    report = json.loads((out / "train" / "report.json").read_text())
    listed = {(Path(s["file"]).name, s["line"]): s["reason"] for s in report["skipped"]}
    assert set(listed) == {("a.jsonl.zst", n) for n in bad}
    assert "malformed JSON" in listed[("a.jsonl.zst", 3)] and "empty document" in listed[("a.jsonl.zst", 15)]
    assert "invalid UTF-8" in listed[("a.jsonl.zst", 23)] and "not a string" in listed[("a.jsonl.zst", 27)]
    assert [Path(f).name for f in report["empty_files"]] == ["b.jsonl.zst"]
    (broken,) = report["broken_files"]
    assert Path(broken["file"]).name == "c.jsonl.zst" and "truncated" in broken["error"]
    assert 0 < broken["lines"] < 300 and broken["compressed_bytes_read"] <= broken["size"] < size_before
    # Everything readable was written: the good file's documents and the complete lines of the cut one.
    kept = good + cut_docs[:broken["lines"]]
    expected_tokens = sum(len(sp.encode(t)) + 1 for t in kept)
    assert report["totals"]["tokens"] == expected_tokens
    samples = read_split(out / "train")
    assert len(samples) * 32 == report["totals"]["written_tokens"]
    assert decoded_documents(sp, samples)[:len(good) - 1] == good[:-1]
    err = capsys.readouterr().err
    assert "c.jsonl.zst: truncated zstd stream" in err and "b.jsonl.zst: empty file" in err

    # The same input under --strict: a failure, and no index.json a trainer could pick up.
    assert cli("prep", "pile", "--input", src, "--output", tmp_path / "strict", "--tokenizer", tokenizer,
               "--seq-len", 32, "--workers", 1, "--strict") == 1
    assert not (tmp_path / "strict" / "train" / "index.json").exists()
    assert (tmp_path / "strict" / "train" / "report.json").exists()


def test_truncated_gzip_is_reported_and_other_files_complete(tmp_path, tokenizer, cli, read_split):
    src = tmp_path / "c4"
    write_gz(src / "c4-train.00000-of-01024.json.gz", c4_lines(synthetic_documents(50, seed=3)))
    cut = write_gz(src / "c4-train.00001-of-01024.json.gz", c4_lines(synthetic_documents(400, seed=4)))
    truncate(cut, 0.6)
    out = tmp_path / "mds"
    assert cli("prep", "c4", "--input", src, "--output", out, "--tokenizer", tokenizer, "--seq-len", 32,
               "--workers", 1) == 0
    report = json.loads((out / "train" / "report.json").read_text())
    (broken,) = report["broken_files"]
    assert broken["file"].endswith("00001-of-01024.json.gz") and "truncated gzip" in broken["error"]
    per_file = {Path(f["file"]).name: f for f in report["files"]}
    assert per_file["c4-train.00000-of-01024.json.gz"]["documents"] == 50
    assert 0 < per_file["c4-train.00001-of-01024.json.gz"]["documents"] == broken["lines"] < 400
    assert len(read_split(out / "train")) * 32 == report["totals"]["written_tokens"]


def _shards(split: Path) -> list:
    index = json.loads((split / "index.json").read_text())
    return [(s["raw_data"]["basename"], s["raw_data"]["hashes"]) for s in index["shards"]]


def test_kill_9_midway_then_rerun_equals_uninterrupted_run(tmp_path, tokenizer, cli, read_split):
    make_pile(tmp_path / "in", sizes=(400,) * 6, seed=40)
    args = ["--input", tmp_path / "in", "--tokenizer", tokenizer, "--seq-len", 64]
    assert cli("prep", "pile", *args, "--output", tmp_path / "whole", "--workers", 2) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "m2dist", "prep", "pile", *map(str, args), "--output",
                             str(killed), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (killed / "train" / "part-00001" / "done.json").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "train" / "index.json").exists()
    done_before = sorted(p.name for p in (killed / "train").glob("part-*"))
    assert 2 <= len(done_before) < 6

    assert cli("prep", "pile", *args, "--output", killed, "--workers", 1) == 0
    report = json.loads((killed / "train" / "report.json").read_text())
    assert report["parts_reused"] == len(done_before)
    assert not list((killed / "train").glob(".tmp-*"))
    # Same samples in the same order, and byte-identical shards.
    assert _shards(killed / "train") == _shards(tmp_path / "whole" / "train")
    a, b = read_split(killed / "train"), read_split(tmp_path / "whole" / "train")
    assert len(a) == len(b) and all((x["tokens"] == y["tokens"]).all() for x, y in zip(a, b))

    # A re-run with the same arguments redoes nothing; different arguments redo everything.
    assert cli("prep", "pile", *args, "--output", killed, "--workers", 2) == 0
    assert json.loads((killed / "train" / "report.json").read_text())["parts_reused"] == 6
    assert cli("prep", "pile", *args[:-1], 32, "--output", killed, "--workers", 2) == 0
    assert json.loads((killed / "train" / "report.json").read_text())["parts_reused"] == 0


def test_verify_passes_then_catches_a_corrupt_shard(tmp_path, tokenizer, cli, capsys):
    make_pile(tmp_path / "in", sizes=(60,))
    out = tmp_path / "mds"
    assert cli("prep", "pile", "--input", tmp_path / "in", "--output", out, "--tokenizer", tokenizer,
               "--seq-len", 32, "--compression", "zstd", "--shard-size", "4kb", "--workers", 1) == 0
    assert cli("prep", "verify", out, "--tokenizer", tokenizer) == 0
    printed = capsys.readouterr().out
    assert "all ok" in printed and "sample 0:" in printed
    shard = sorted((out / "train").glob("part-00000/shard.*.mds.zstd"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert cli("prep", "verify", out) == 1
    assert "sha1 mismatch" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, tokenizer, cli, capsys):
    assert cli("prep", "pile", "--input", tmp_path / "missing", "--output", tmp_path / "o", "--tokenizer",
               tokenizer, "--seq-len", 8) == 2
    assert "missing: no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty_dir").mkdir()
    assert cli("prep", "c4", "--input", tmp_path / "empty_dir", "--output", tmp_path / "o", "--tokenizer",
               tokenizer, "--seq-len", 8) == 2
    assert "no c4 files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("prep", "c4", "--input", tmp_path, "--output", tmp_path / "o", "--tokenizer", tokenizer,
            "--seq-len", 8, "--subsets", "Github")


def test_all_bad_input_fails_and_writes_no_index(tmp_path, tokenizer, cli, capsys):
    """Issue 14.7: input that is all bad exited 0 with a 0-sample index.json, which verify and train crashed on."""
    src = tmp_path / "in"
    write_zst(src / "a.jsonl.zst", [b"not json", b'{"text": ""}', b'{"meta": {}}'])
    (src / "b.jsonl.zst").write_bytes(b"")
    out = tmp_path / "mds"
    (out / "train").mkdir(parents=True)
    (out / "train" / "index.json").write_text('{"version": 2, "shards": []}')  # left by an earlier run
    assert cli("prep", "pile", "--input", src, "--output", out, "--tokenizer", tokenizer, "--seq-len", 16) == 1
    err = capsys.readouterr().err
    assert f"m2dist: error: {out / 'train'}: no input gave a sample" in err and "Traceback" not in err
    assert not (out / "train" / "index.json").exists()
    assert json.loads((out / "train" / "report.json").read_text())["totals"]["skipped"] == 3
    # verify says so in one line per problem, no traceback.
    assert cli("prep", "verify", out) == 1
    assert "no merged index.json" in capsys.readouterr().err


def test_files_of_other_types_in_an_input_folder_are_reported(tmp_path, tokenizer, cli, capsys):
    src = tmp_path / "in"
    make_pile(src, sizes=(30,))
    (src / "README.txt").write_text("notes\n")
    (src / "sub").mkdir()
    (src / "sub" / "part.parquet").write_bytes(b"PAR1")
    out = tmp_path / "mds"
    assert cli("prep", "pile", "--input", src, "--output", out, "--tokenizer", tokenizer, "--seq-len", 16) == 0
    report = json.loads((out / "train" / "report.json").read_text())
    assert sorted(Path(f).name for f in report["ignored_files"]) == ["README.txt", "part.parquet"]
    err = capsys.readouterr().err
    assert "ignoring 2 files that are not pile input" in err and "ignored: 2 files of other types" in err
    # A folder with nothing but other types names what it does hold.
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.parquet").write_bytes(b"PAR1")
    assert cli("prep", "pile", "--input", tmp_path / "only", "--output", out, "--tokenizer", tokenizer,
               "--seq-len", 16) == 2
    assert "1 files of other types (first: x.parquet)" in capsys.readouterr().err
