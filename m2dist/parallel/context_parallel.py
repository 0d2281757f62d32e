"""``apply_context_parallel(model)``: the plan's ``"cp"`` axis on a single-device (or tensor-parallel) m2dist model.

Each rank of megatron's context-parallel group then runs the model on its ``L/CP`` consecutive tokens of the same
samples (the trainer's loader slices them): the mixer cores exchange what the long convolutions need, the filters
are generated for the global length and the rank's channels, position embeddings are offset (``plan``, ``styles``).
No parameter is cut, so names, shapes and checkpoints are those of the model without CP; the replicated parameters'
gradients are summed over DP x CP by the engine (``groups``).

Order in the trainer: build -> ``m2dist.kernels.accelerate`` -> tensor parallel -> context parallel -> activation
checkpointing / compile. The CP core replaces the core's forward on the instance, so it also wins over a kernel
converter applied afterwards, and runs that converter's long conv.
"""

from __future__ import annotations

from torch import nn


def apply_context_parallel(model: nn.Module) -> nn.Module:
    """Wrap ``model`` for megatron's CP group (``m2dist.parallel.init_groups`` initialises it); in place."""
    from m2dist.parallel.mappings import cp_rank, cp_size
    from m2dist.parallel.parallelize import parallelize

    size = cp_size()
    if size == 1:
        return model
    return parallelize(model, "cp", cp_rank(), size)
