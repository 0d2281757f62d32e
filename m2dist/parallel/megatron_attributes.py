"""megatron-core's per-parameter tensor-parallel attributes, set from the plan on a sharded model's parameters.

``tensor_model_parallel``, ``partition_dim`` and ``partition_stride`` are what DeepSpeed's gradient norm / clipping
reads (through its ``mpu``: sharded parameters counted from every rank, replicated ones once) and what the checkpoint
manager's ``parameter_layout`` records; ``loss.loss_functions`` reads ``tensor_model_parallel`` on the LM head to
know that the logits are vocab-sharded.
"""

from __future__ import annotations

from typing import Mapping

from torch import nn

from m2dist.parallel.plan import ShardSpec


def tag_parameters(model: nn.Module, plan: Mapping[str, ShardSpec]) -> None:
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

    for name, p in model.named_parameters():  # tied parameters appear once
        spec = plan[name]
        for attr in ("tensor_model_parallel", "partition_dim", "partition_stride"):
            if hasattr(p, attr):
                delattr(p, attr)
        set_tensor_model_parallel_attributes(p, not spec.replicated, -1 if spec.replicated else spec.dim,
                                             spec.stride)
