"""The loader of one split of a run: ``m2dist.data.build_dataloader`` given the run config's sizes, with
data-parallel ranks disjoint and the ranks of a tensor-parallel group reading identical batches."""

from __future__ import annotations

from m2dist.config.schema import Config
from m2dist.data.contract import task_of
from m2dist.models.build import sequence_length


def build_split_loader(cfg: Config, split: str, groups, training: bool = True):
    from m2dist.data import build_dataloader

    return build_dataloader(
        cfg.data,
        split=split,
        micro_batch_size=cfg.trainer.micro_batch_size,
        seq_len=sequence_length(cfg.model) if task_of(cfg) != "image" else None,
        # streaming's replication: the ranks of a tensor-parallel group read identical samples.
        tensor_parallel_size=groups.tensor_size,
        image_size=cfg.model.image_size,
        train=training,
    )
