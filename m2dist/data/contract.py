"""The data contract: the columns ``m2dist prep`` writes, the batch keys the readers yield and the trainer reads,
the ignored-label value, and the task a run trains.

Stored samples (MDS columns): a language-model split has ``tokens`` (and, for the Pile, ``source``), an image split
``image`` (JPEG) and ``label`` (int).

Batches:

- language models (``causal_lm``, ``mlm``): ``input_ids`` (B, L) int64, ``labels`` (B, L) int64 with
  ``IGNORE_INDEX`` where nothing is predicted, ``attention_mask`` (B, L) int64 (1 = a real token);
- images (``image``): ``images`` (B, 3, H, W) float, ``labels`` (B,) int64;
- every batch: ``sample_ids`` (B,) int64, the global sample index (it proves that no sample is repeated or skipped,
  and evaluation merges its statistics by it).

The task follows the model's arch (``m2dist.config.model.TASK_OF_ARCH``, kept in the config because the config
checks ``data.kind`` against it when it loads).
"""

from __future__ import annotations

from m2dist.config.model import TASK_OF_ARCH, Task

# Label of a position that is not predicted: torch's cross_entropy default, and megatron-core's.
IGNORE_INDEX = -100

# ---------------------------------------------------------------- MDS columns (writer: data_prep, reader: datasets.py)
TOKENS_COLUMN = "tokens"
SOURCE_COLUMN = "source"
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
# An image split's columns and their MDS encodings (the reader decodes ``jpeg`` into a PIL image).
IMAGE_COLUMNS = {IMAGE_COLUMN: "jpeg", LABEL_COLUMN: "int"}

# ---------------------------------------------------------------- batch keys
INPUT_IDS = "input_ids"
LABELS = "labels"
ATTENTION_MASK = "attention_mask"
IMAGES = "images"
SAMPLE_IDS = "sample_ids"


def task_of(cfg) -> Task:
    """The task a run (an ``m2dist.config.Config``) trains: its model arch's."""
    return TASK_OF_ARCH[cfg.model.arch]
