"""Streaming readers of ``m2dist prep`` output: causal LM, masked LM and image classification.

``build_dataloader(data_config, split=..., micro_batch_size=..., seq_len=..., tensor_parallel_size=...)``
is the entry point (see ``loader.py``); ``streaming`` is imported only when it is called.
"""

from m2dist.data.loader import StreamingBatches, build_dataloader

__all__ = ["StreamingBatches", "build_dataloader"]
