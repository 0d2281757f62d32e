"""``apply_tensor_parallel(model, model_config)``: shard a single-device m2dist model over the TP group, in place.

torchtitan style: the trainer builds the full model with the same seed on every rank (so TP=k starts from exactly the
TP=1 weights, see ``m2dist.parallel.rng``), then this applies the plan's ``"tp"`` axis (``plan``, ``parallelize``):
each rank keeps its slice of every sharded parameter and the planned forwards are wrapped with their collectives.
Parameter names stay those of the single-device model.

Order in the trainer: build -> ``m2dist.kernels.accelerate`` -> tensor parallel -> activation checkpointing / compile.
The plan matches layers by type and wraps module instances, so kernel-backed subclasses applied first are sharded the
same way; a converter applied afterwards must convert in place (``styles``).

Afterwards every parameter carries megatron's ``tensor_model_parallel`` / ``partition_dim`` / ``partition_stride``
(``megatron_attributes``) and, with ``universal_info``, DeepSpeed's universal-checkpoint restore metadata
(``universal_checkpoint``). The loss goes through ``m2dist.parallel.loss_functions(model)``.
"""

from __future__ import annotations

from torch import nn


def apply_tensor_parallel(model: nn.Module, model_config=None, universal_info: bool = True) -> nn.Module:
    """Shard ``model`` (built by ``m2dist.models.build_model``, identical on every rank) over megatron's TP group
    (``m2dist.parallel.init_groups`` initialises it). Returns the same object, modified in place. ``model_config``
    is accepted for the callers' symmetry; the plan is read from the model's own layers."""
    from m2dist.parallel.mappings import tp_rank, tp_size
    from m2dist.parallel.megatron_attributes import tag_parameters
    from m2dist.parallel.parallelize import parallelize
    from m2dist.parallel.plan import plan_for_model

    size = tp_size()
    if size == 1:
        return model
    parallelize(model, "tp", tp_rank(), size)
    tag_parameters(model, plan_for_model(model))
    if universal_info:
        from m2dist.parallel.universal_checkpoint import universal_checkpoint_info

        universal_checkpoint_info(model)  # attaches the restore metadata to the parameters
    return model
