"""A prepared sample dataset (tokenizer, packed Pile-format LM data, images) shared by the reader tests."""

from __future__ import annotations

import pytest

from data_prep.synthetic import private_streaming_tempdir


@pytest.fixture(scope="session", autouse=True)
def _streaming_filelocks(tmp_path_factory):
    with private_streaming_tempdir(str(tmp_path_factory.mktemp("streaming-tmp"))):
        yield


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> dict:
    from data_prep.image_prep import prep_imagenet
    from data_prep.sample_corpus import write_sample
    from data_prep.text_prep import prep_text
    from data_prep.tokenizer_training import train_tokenizer

    root = tmp_path_factory.mktemp("prepared")
    write_sample(str(root / "raw"))
    tok, _ = train_tokenizer([str(root / "raw/pile/train")], "pile", 512, str(root / "tok"))
    for split, src in (("train", "pile/train/00.jsonl.zst"), ("val", "pile/val.jsonl.zst")):
        assert prep_text("pile", [str(root / "raw" / src)], str(root / "lm"), tok, 64, split=split, workers=1) == 0
    for split in ("train", "val"):
        assert prep_imagenet(str(root / "raw/imagenet"), str(root / "img"), split=split, workers=1) == 0
    return {"root": root, "tokenizer": tok, "lm": str(root / "lm"), "img": str(root / "img")}


def _stored(path: str) -> list[dict]:
    from streaming import StreamingDataset

    from m2dist.data.shm import registering_prefix

    with registering_prefix():  # other jobs on this host may be taking streaming prefixes
        ds = StreamingDataset(local=path, shuffle=False, batch_size=1)
    return [ds[i] for i in range(ds.num_samples)]


@pytest.fixture(scope="session")
def stored():
    """Samples of a split in stored order, through a plain ``streaming.StreamingDataset``."""
    return _stored
