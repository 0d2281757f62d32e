"""Parallelism applied to a single-device model: process groups (``groups``), tensor parallelism
(``tensor_parallel.apply_tensor_parallel``, written separately), TP-aware RNG."""

from m2dist.parallel.groups import ParallelGroups, destroy_groups, init_groups

__all__ = ["ParallelGroups", "destroy_groups", "init_groups"]
