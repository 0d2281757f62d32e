"""Rank-aware logging: every line says which rank wrote it."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = os.environ.get("RANK", "0")
        return True


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries are chatty at INFO (DeepSpeed logs every config key, megatron its FSDP fallbacks).
    for noisy in ("deepspeed", "DeepSpeed", "streaming", "torch.distributed", "megatron"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    quiet_known_noise()


# Dependencies' warnings that are not news for an m2dist run, printed several times per rank on every run. Only these
# exact messages: any other warning of the same libraries still shows.
_QUIET_WARNINGS = (
    # megatron-core: we use its local (torch) fallbacks on purpose; m2dist needs neither library.
    (UserWarning, r"Transformer Engine and Apex are not installed"),
    # DeepSpeed's ZeRO calls the deprecated name, not m2dist.
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
)
_QUIET_RECORDS = {
    # streaming warns on every dataset built with replication (tensor parallel). m2dist's loader state is the
    # global sample position, which accounts for replication (m2dist/data/loader.py; tests/data prove the resume).
    "streaming.base.dataset": "you will resume training from the wrong sample",
    # DeepSpeed says so when a universal checkpoint is loaded without an mpu, i.e. at tensor parallel 1, where
    # a tp size of 1 is right (at TP > 1 m2dist passes its mpu).
    "DeepSpeed": "MPU is not provided, setting tp size to 1",
    # Importing DeepSpeed on a CPU-only host: expected there, and harmless.
    "torch.utils.cpp_extension": "No CUDA runtime is found",
}


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_known_noise() -> None:
    """Silence the dependency messages listed above (idempotent)."""
    import warnings

    # Progress bars (DeepSpeed's universal-checkpoint conversion, prep) only on a terminal: in a log file they are
    # \r and escape codes. TQDM_DISABLE is read by every tqdm bar made afterwards in this process and its children.
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
    for category, message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, text in _QUIET_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(_DropMessage(text))


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
