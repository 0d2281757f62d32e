"""Readers against the stored samples, computed independently of ``m2dist.data``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from m2dist.config import DataConfig
from m2dist.data import build_dataloader
from m2dist.data.contract import IGNORE_INDEX
from m2dist.data.samples import mlm_example
from m2dist.data.tokenizer import tokenizer_info


def lm_config(prepared, **kw) -> DataConfig:
    return DataConfig(path=prepared["lm"], tokenizer=prepared["tokenizer"], **kw)


def test_causal_lm_batches_are_stored_tokens_shifted(prepared, stored):
    rows = stored(prepared["lm"] + "/train")
    loader = build_dataloader(lm_config(prepared), split="train", micro_batch_size=4, seq_len=64)
    seen = 0
    for batch in loader:
        assert batch["input_ids"].shape == batch["labels"].shape == (4, 64)
        assert batch["input_ids"].dtype == batch["labels"].dtype == batch["sample_ids"].dtype == torch.int64
        for ids, labels, sid in zip(batch["input_ids"], batch["labels"], batch["sample_ids"]):
            tokens = rows[int(sid)]["tokens"].astype(np.int64)
            assert ids.tolist() == tokens.tolist()
            assert labels[:-1].tolist() == tokens[1:].tolist() and labels[-1] == IGNORE_INDEX
        seen += 1
        if seen == 5:
            break
    # Reading fewer tokens than stored: the last position learns the next stored token.
    short = build_dataloader(lm_config(prepared), split="val", micro_batch_size=2, seq_len=40)
    batch = next(iter(short))
    tokens = stored(prepared["lm"] + "/val")[int(batch["sample_ids"][0])]["tokens"]
    assert batch["labels"][0, -1] == int(tokens[40]) and batch["input_ids"][0].tolist() == tokens[:40].tolist()


def test_mlm_rate_80_10_10_specials_and_determinism(prepared):
    info = tokenizer_info(prepared["tokenizer"])
    cfg = lm_config(prepared, kind="mlm", mlm_probability=0.3)
    a = build_dataloader(cfg, split="train", micro_batch_size=8, seq_len=64, seed=5)
    b = build_dataloader(cfg, split="train", micro_batch_size=8, seq_len=64, seed=5)
    chosen = kinds_mask = kinds_random = kinds_same = candidates = 0
    for _, (x, y) in zip(range(40), zip(a, b)):
        for key in x:
            assert torch.equal(x[key], y[key])  # same seed, same sample ids: same masks
        labels, inputs = x["labels"], x["input_ids"]
        sel = labels != IGNORE_INDEX
        assert not torch.isin(labels[sel], torch.tensor(info.special_ids)).any()
        candidates += int((~torch.isin(torch.where(sel, labels, inputs), torch.tensor(info.special_ids))).sum())
        chosen += int(sel.sum())
        kinds_mask += int((inputs[sel] == info.mask_id).sum())
        kinds_same += int((inputs[sel] == labels[sel]).sum())
        kinds_random += int(((inputs[sel] != info.mask_id) & (inputs[sel] != labels[sel])).sum())
    assert abs(chosen / candidates - 0.3) < 0.015
    assert abs(kinds_mask / chosen - 0.8) < 0.02
    assert abs(kinds_random / chosen - 0.1) < 0.015 and abs(kinds_same / chosen - 0.1) < 0.015


def test_mlm_never_masks_padding_or_eos():
    tokens = np.array([7, 8, 3, 9, 10, 11, 3], dtype=np.uint16)
    ex = mlm_example(tokens, 12, pad_id=0, mask_id=4, vocab_size=50, special_ids=(0, 1, 2, 3, 4),
                     probability=1.0, seed=0, epoch=0, sample_id=0)
    assert ex["attention_mask"].tolist() == [1] * 7 + [0] * 5
    assert ex["labels"].tolist() == [7, 8, -100, 9, 10, 11, -100] + [-100] * 5
    assert ex["input_ids"][7:].tolist() == [0] * 5 and ex["input_ids"][[2, 6]].tolist() == [3, 3]
    other = mlm_example(tokens, 12, pad_id=0, mask_id=4, vocab_size=50, special_ids=(0, 1, 2, 3, 4),
                        probability=0.5, seed=1, epoch=0, sample_id=0)
    again = mlm_example(tokens, 12, pad_id=0, mask_id=4, vocab_size=50, special_ids=(0, 1, 2, 3, 4),
                        probability=0.5, seed=1, epoch=0, sample_id=0)
    assert torch.equal(other["input_ids"], again["input_ids"]) and torch.equal(other["labels"], again["labels"])


def test_image_batches_eval_transform_and_seeded_augmentation(prepared, stored):
    cfg = DataConfig(path=prepared["img"], kind="image")
    ev = build_dataloader(cfg, split="val", micro_batch_size=3, image_size=32)
    batch = next(iter(ev))
    assert batch["images"].shape == (3, 3, 32, 32) and batch["images"].dtype == torch.float32
    rows = stored(prepared["img"] + "/val")
    reference = T.Compose([T.Resize(37), T.CenterCrop(32), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for img, label, sid in zip(batch["images"], batch["labels"], batch["sample_ids"]):
        row = rows[int(sid)]
        assert int(label) == int(row["label"])
        assert torch.allclose(img, reference(row["image"].convert("RGB")), atol=1e-6)
    train = [next(iter(build_dataloader(cfg, split="train", micro_batch_size=4, image_size=32, seed=s)))
             for s in (1, 1, 2)]
    assert torch.equal(train[0]["sample_ids"], train[2]["sample_ids"])
    assert torch.equal(train[0]["images"], train[1]["images"]) and not torch.equal(train[0]["images"],
                                                                                   train[2]["images"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_continues_the_exact_order(prepared, num_workers):
    cfg = lm_config(prepared, kind="mlm", num_workers=num_workers)
    full_batches = list(build_dataloader(cfg, split="train", micro_batch_size=4, seq_len=64))
    full = [b["sample_ids"].tolist() for b in full_batches]
    first = build_dataloader(cfg, split="train", micro_batch_size=4, seq_len=64)
    head = []
    for batch in first:
        head.append(batch["sample_ids"].tolist())
        if len(head) == 7:
            break
    state = first.state_dict()
    assert state["sample_in_epoch"] == 28
    resumed = build_dataloader(cfg, split="train", micro_batch_size=4, seq_len=64)
    resumed.load_state_dict(state)
    tail_batches = list(resumed)
    tail = [b["sample_ids"].tolist() for b in tail_batches]
    assert head + tail == full
    # The masks too: they depend on (seed, epoch, sample id) only, not on where reading started.
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(tail_batches, full_batches[7:]))
    # Every sample once, plus the few repeats streaming uses to give canonical nodes equal shares.
    ids = [i for b in full for i in b]
    assert set(ids) == set(stored_count(prepared))
    assert len(ids) - len(set(ids)) < state["num_canonical_nodes"]


def stored_count(prepared):
    import json
    from pathlib import Path

    index = json.loads((Path(prepared["lm"]) / "train" / "index.json").read_text())
    return range(sum(s["samples"] for s in index["shards"]))
