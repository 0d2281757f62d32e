"""``m2dist.train.tasks.forward``: which inputs reach the model for each task, and that leaving the padding mask out
of a causal model changes no logit a label reads (right padding + causality), against the model run with the mask."""
import numpy as np
import pytest
import torch

from m2dist.data.contract import ATTENTION_MASK, IGNORE_INDEX, INPUT_IDS
from m2dist.data.samples import causal_lm_example, collate_samples, mlm_example
from m2dist.models import from_preset
from m2dist.train.tasks import forward


class _Spy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, *args):
        self.calls.append(len(args))
        return self.model(*args)


def _causal_batch(seq_len=32):
    rng = np.random.default_rng(0)
    lengths = (seq_len, 20, 7)  # one packed sample, two padded ones (--no-pack)
    return collate_samples([causal_lm_example(rng.integers(5, 500, n), seq_len, pad_id=0) for n in lengths])


@pytest.mark.parametrize("name", ["m2-gpt-tiny", "gpt-tiny"])
def test_causal_lm_without_the_mask_gives_the_masked_logits(name):
    torch.manual_seed(0)
    model = _Spy(from_preset(name, dropout=0.0).eval())
    batch = _causal_batch()
    logits, labels = forward(model, batch, "causal_lm", torch.float32, "cpu")
    assert model.calls == [1]  # input_ids only
    with torch.no_grad():
        masked = model.model(batch[INPUT_IDS], batch[ATTENTION_MASK])
    read = labels != IGNORE_INDEX
    assert (~batch[ATTENTION_MASK].bool() <= ~read).all()  # no label on a pad
    scale = masked[read].abs().max()
    assert ((logits[read] - masked[read]).abs().max() / scale).item() < 1e-5


def _mlm_batch(lengths):
    samples = [mlm_example(np.arange(5, 5 + n), 32, pad_id=0, mask_id=4, vocab_size=512, special_ids=(0, 1, 2, 3, 4),
                           probability=0.15, seed=0, epoch=0, sample_id=i) for i, n in enumerate(lengths)]
    return collate_samples(samples)


def test_mlm_passes_the_mask_of_a_padded_batch():
    torch.manual_seed(0)
    model = _Spy(from_preset("m2-bert-tiny", dropout=0.0).eval())
    forward(model, _mlm_batch((32, 11)), "mlm", torch.float32, "cpu")
    assert model.calls == [2]  # input_ids and attention_mask: a bidirectional model would see the pads


@pytest.mark.parametrize("name", ["m2-bert-tiny", "bert-tiny"])
def test_mlm_drops_the_all_ones_mask_of_a_packed_batch(name):
    torch.manual_seed(0)
    model = _Spy(from_preset(name, dropout=0.0).eval())
    batch = _mlm_batch((32, 32))
    assert batch[ATTENTION_MASK].bool().all()
    logits, _ = forward(model, batch, "mlm", torch.float32, "cpu")
    assert model.calls == [1]
    with torch.no_grad():
        masked = model.model(batch[INPUT_IDS], batch[ATTENTION_MASK])
    scale = masked.abs().max()
    assert ((logits - masked).abs().max() / scale).item() < 1e-5
