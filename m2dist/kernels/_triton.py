"""Whether Triton kernels can run here, and the few helpers every kernel file shares.

Two ways a kernel runs: compiled on a CUDA device, or through Triton's numpy interpreter on CPU
(`TRITON_INTERPRET=1`, set before triton is imported; the tests do this). The interpreter cannot
do arithmetic on bf16 values (it stores them as raw uint16), so kernels take an ``UPCAST`` flag that
converts loaded tiles to fp32 before any arithmetic; on a GPU the flag is off and tensor cores see bf16.
"""
from __future__ import annotations

import os

import torch

try:  # triton is a Linux-only dependency; everything here degrades to the PyTorch path without it
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAVE_TRITON = False


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def needs_upcast(*tensors: torch.Tensor) -> bool:
    """The interpreter must see bf16 as fp32 before any arithmetic (stack-facts §4)."""
    return interpreting() and any(t.dtype == torch.bfloat16 for t in tensors)
