"""The loader of one split of a run: ``m2dist.data.build_dataloader`` given the run config's sizes, with
data-parallel ranks disjoint and the ranks of a tensor x context group reading identical batches; under context
parallelism each rank keeps its slice of the sequence."""

from __future__ import annotations

from m2dist.config.schema import Config
from m2dist.data.contract import ATTENTION_MASK, IMAGES, INPUT_IDS, LABELS, task_of
from m2dist.models.build import sequence_length

# Per task, the batch keys laid out along the sequence and their sequence dim; the others (sample_ids, an image's
# label) are per sample. An image's patch sequence is row-major, so a block of pixel rows (dim 2 of (B, C, H, W))
# is a consecutive block of patches.
_TOKEN_DIMS = {INPUT_IDS: 1, LABELS: 1, ATTENTION_MASK: 1}
SEQUENCE_DIMS = {"causal_lm": _TOKEN_DIMS, "mlm": _TOKEN_DIMS, "image": {IMAGES: 2}}


class ContextSlices:
    """The batches of ``loader`` cut to context rank ``rank``'s consecutive block of the sequence, ``L/size``
    tokens or patches (rank order = sequence order; ``m2dist.parallel.context_conv.split_sequence``). Slicing whole
    samples keeps everything per-sample equal to ``size = 1``: MLM masks are drawn on the full sample, a causal label
    (the next token, aligned by the reader) is right at a block's last position, the next block's first token, and
    an image is augmented whole. Resumption state is the loader's."""

    def __init__(self, loader, rank: int, size: int, task: str):
        self.loader, self.rank, self.size = loader, rank, size
        self.dims = SEQUENCE_DIMS[task]

    def __iter__(self):
        from m2dist.parallel.context_conv import split_sequence

        for batch in self.loader:
            yield {k: split_sequence(v, self.dims[k], self.rank, self.size).contiguous() if k in self.dims else v
                   for k, v in batch.items()}

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def build_split_loader(cfg: Config, split: str, groups, training: bool = True):
    from m2dist.data import build_dataloader

    loader = build_dataloader(
        cfg.data,
        split=split,
        micro_batch_size=cfg.trainer.micro_batch_size,
        seq_len=sequence_length(cfg.model) if task_of(cfg) != "image" else None,
        # streaming's replication: the ranks of a tensor x context group read identical samples.
        tensor_parallel_size=groups.tensor_size,
        context_parallel_size=groups.context_size,
        image_size=cfg.model.image_size,
        train=training,
    )
    if groups.context_size == 1:
        return loader
    return ContextSlices(loader, groups.context_rank, groups.context_size, task_of(cfg))
