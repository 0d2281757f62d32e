"""What an asynchronous save writes: a host-memory copy of the state DeepSpeed would have saved, taken in the
training thread so that training may change the originals right after."""

from __future__ import annotations

import collections
import copy
from typing import Any

import torch


def to_host(obj, memo=None):
    """A copy of ``obj`` with every tensor copied to host memory (the same tensor object once: tied weights stay
    shared); containers rebuilt, other values deep-copied. The copy is what the background writer saves, so training
    may change the originals right after."""
    memo = {} if memo is None else memo
    if torch.is_tensor(obj):
        if id(obj) not in memo:
            memo[id(obj)] = obj.detach().to("cpu", copy=True)
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = {k: to_host(v, memo) for k, v in obj.items()}
        return collections.OrderedDict(out) if isinstance(obj, collections.OrderedDict) else out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_host(v, memo) for v in obj)
    return copy.deepcopy(obj)


class HostCopyCheckpointEngine:
    """Stands in for DeepSpeed's checkpoint engine during an asynchronous save: ``save`` keeps a host copy of the
    state and its path instead of writing; everything else is the real engine's."""

    def __init__(self, inner):
        self.inner = inner
        self.files: list[tuple[str, Any]] = []

    def save(self, state_dict, path: str):
        self.files.append((path, to_host(state_dict)))

    def preserves_storage_sharing(self):
        # DeepSpeed would clone each tensor (on its device) so that torch.save does not write whole flat buffers;
        # the host copy already makes each tensor its own storage.
        return False

    def __getattr__(self, attr):
        return getattr(self.inner, attr)
