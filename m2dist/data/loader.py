"""``build_dataloader``: the one way the trainer reads prepared data.

Ranks and world size come from the usual torch.distributed environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``), which streaming reads itself. With ``tensor_parallel_size = t`` and
``context_parallel_size = c`` streaming's ``replication=t*c`` makes each group of t*c consecutive ranks (a data
rank's tensor x context ranks, megatron's order: TP innermost, then CP) read identical samples, while data-parallel
groups read disjoint ones. The context ranks then keep their slices of the sequence (the trainer's
``split_loader``).

Resumption: ``state_dict()`` records how many samples of the *global* order have been consumed
(streaming's ``sample_in_epoch``, plus the epoch, seed and ``num_canonical_nodes``); ``load_state_dict()``
before iterating continues that order. With ``partition_algo="orig"`` and a fixed ``num_canonical_nodes``
the global order depends only on the seed, the epoch and the canonical node count, and each global step
takes the next ``micro_batch_size * data_parallel_size`` samples of it, so resuming with a different
data-parallel size but the same global batch continues without repeating or skipping a sample.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Iterator, Optional

from m2dist.config.loader import ConfigError
from m2dist.config.model import Task

# The upper bound of canonical nodes: the global order is only defined for a fixed count, and every
# physical node count that divides it (1, 2, 4, ..., 64) can resume it.
MAX_CANONICAL_NODES = 64


def default_canonical_nodes(num_samples: int) -> int:
    """64, or for small datasets the largest power of two leaving >= 64 samples per canonical node.

    A function of the dataset alone, so every run over the same data agrees; a resumed run takes the
    value from the checkpointed state anyway.
    """
    n = 1
    while n * 2 <= MAX_CANONICAL_NODES and num_samples // (n * 2) >= 64:
        n *= 2
    return n


class StreamingBatches:
    """An iterable of batch dicts (one epoch per ``iter()``) with exact mid-epoch resumption."""

    def __init__(self, dataset, loader, data_parallel_size: int):
        self.dataset = dataset
        self.loader = loader
        self.data_parallel_size = data_parallel_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """Position in the global sample order; the same on every rank, so any rank may save it."""
        return dict(self.loader.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Call before iterating; the next ``iter()`` continues from ``state``."""
        self.loader.load_state_dict(dict(state))


def _world() -> tuple[int, int]:
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def build_dataloader(data_config, *, split: str, micro_batch_size: int, seq_len: Optional[int] = None,
                     tensor_parallel_size: int = 1, seed: Optional[int] = None, image_size: int = 224,
                     train: Optional[bool] = None, num_canonical_nodes: Optional[int] = None,
                     context_parallel_size: int = 1) -> StreamingBatches:
    """Batches of ``<data_config.path>/<split>/`` for this rank.

    ``train`` (default: ``split == data_config.train_split``) selects shuffling and augmentation; eval
    splits are read in order with the eval transforms. ``seed`` (default ``data_config.shuffle_seed``)
    seeds MLM masking and image augmentation; the shuffle uses ``data_config.shuffle_seed``.
    The batches' keys, shapes and dtypes are those of ``m2dist.data.contract`` (images are image_size square).
    """
    from streaming import StreamingDataLoader

    import functools

    from m2dist.data.datasets import ImageDataset, TokenDataset
    from m2dist.data.shm import registering_prefix
    from m2dist.data.samples import collate_samples
    from m2dist.data.tokenizer import tokenizer_info

    kind = data_config.kind
    if train is None:
        train = split == data_config.train_split
    seed = data_config.shuffle_seed if seed is None else seed
    if not data_config.path:
        raise ConfigError("data.path is empty: point it at an `m2dist prep` output directory")
    local = Path(data_config.path) / split
    remote = f"{data_config.remote.rstrip('/')}/{split}" if data_config.remote else None
    if remote is None:
        from m2dist.data.checks import check_split

        num_samples = check_split(local, f"data.path + split {split!r}")
    _, world_size = _world()
    if tensor_parallel_size < 1 or world_size % tensor_parallel_size:
        raise ConfigError(f"tensor_parallel_size {tensor_parallel_size} does not divide the world size {world_size}")
    replicas = tensor_parallel_size * context_parallel_size  # ranks reading the same samples
    if context_parallel_size < 1 or world_size % replicas:
        raise ConfigError(f"tensor_parallel_size {tensor_parallel_size} x context_parallel_size "
                          f"{context_parallel_size} does not divide the world size {world_size}")

    common = dict(local=str(local), remote=remote, batch_size=micro_batch_size, shuffle=bool(train and
                  data_config.shuffle), shuffle_seed=data_config.shuffle_seed, partition_algo="orig",
                  replication=replicas if replicas > 1 else None)
    if num_canonical_nodes is None and remote is None:
        num_canonical_nodes = default_canonical_nodes(num_samples)
    common["num_canonical_nodes"] = num_canonical_nodes or MAX_CANONICAL_NODES

    if kind in ("causal_lm", "mlm"):
        if not seq_len:
            raise ConfigError("build_dataloader: seq_len is required for language-model data")
        if not data_config.tokenizer:
            raise ConfigError("data.tokenizer is empty: LM data needs the sentencepiece model it was prepared with")
        if not Path(data_config.tokenizer).is_file():
            raise ConfigError(f"{data_config.tokenizer}: data.tokenizer does not exist (train one with "
                              f"`m2dist tokenizer train`)")
        info = tokenizer_info(str(Path(data_config.tokenizer).resolve()))
        make = functools.partial(TokenDataset, kind=kind, seq_len=seq_len, tokenizer=info,
                                 mlm_probability=data_config.mlm_probability, seed=seed, **common)
    elif kind == "image":
        make = functools.partial(ImageDataset, image_size=image_size, train=train, seed=seed, **common)
    else:
        raise ConfigError(f"data.kind {kind!r} is not one of {', '.join(typing.get_args(Task))}")
    # Another job on this host may be taking its streaming prefix right now (m2dist/data/shm.py).
    with registering_prefix():
        dataset = make()

    workers = data_config.num_workers
    # drop_last=False: a dropped final batch would skip samples of the global order; instead the last batch
    # of an epoch may be smaller (equally on every rank: streaming evens out the ranks' shares).
    loader = StreamingDataLoader(dataset, batch_size=micro_batch_size, collate_fn=collate_samples,
                                 num_workers=workers, persistent_workers=workers > 0, drop_last=False)
    return StreamingBatches(dataset, loader, world_size // replicas)
