"""Parallelism applied to a single-device model from outside it, through one declarative plan (``plan``): process
groups (``groups``), tensor parallelism (``tensor_parallel.apply_tensor_parallel``), the loss functions that match a
model's logits (``loss_functions``), TP-aware RNG (``rng``)."""

from m2dist.parallel.groups import ParallelGroups, destroy_groups, init_groups
from m2dist.parallel.loss import LossFunctions, loss_functions

__all__ = ["LossFunctions", "ParallelGroups", "destroy_groups", "init_groups", "loss_functions"]
