"""Fixtures for the data-prep tests: a tokenizer trained once, the CLI run in-process, plain MDS reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.synthetic import pile_lines, private_streaming_tempdir, synthetic_documents, write_zst


@pytest.fixture(scope="session", autouse=True)
def _streaming_filelocks(tmp_path_factory):
    with private_streaming_tempdir(str(tmp_path_factory.mktemp("streaming-tmp"))):
        yield


def _run_cli(*args) -> int:
    from m2dist.cli.main import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def cli():
    """``cli("prep", "pile", ...)`` runs ``m2dist`` in this process and returns its exit code."""
    return _run_cli


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> str:
    """A BPE model trained through the CLI on Pile-format synthetic text (vocab 400, byte fallback)."""
    root = tmp_path_factory.mktemp("tok")
    docs = synthetic_documents(300, seed=123)
    write_zst(root / "corpus" / "00.jsonl.zst", pile_lines(docs, ["Pile-CC"] * len(docs)))
    assert _run_cli("tokenizer", "train", "--input", root / "corpus", "--format", "pile", "--vocab-size", 400,
                   "--output", root / "tok") == 0
    return str(root / "tok.model")


def _read_split(split_dir: Path) -> list[dict]:
    from streaming import StreamingDataset

    from m2dist.data.shm import registering_prefix

    with registering_prefix():  # other jobs on this host may be taking streaming prefixes
        ds = StreamingDataset(local=str(split_dir), shuffle=False, batch_size=1)
    return [ds[i] for i in range(ds.num_samples)]


@pytest.fixture(scope="session")
def read_split():
    """Every sample of a split, in stored order, through a plain ``streaming.StreamingDataset``."""
    return _read_split
