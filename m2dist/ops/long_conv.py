"""FFT long convolution, causal or bidirectional (spec §1.6, §1.7, §7.1-7.2).

The reference every M2 sequence mixer goes through and every long-conv kernel in ``m2dist/kernels`` is tested
against, so the signature and semantics are a contract.
"""

from __future__ import annotations

from typing import Optional

import torch


def check_long_conv_inputs(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor] = None) -> None:
    """The shapes ``long_conv`` takes (a kernel standing in for it checks the same)."""
    if u.dim() != 3:
        raise ValueError(f"long_conv: u must be (B, H, L), got shape {tuple(u.shape)}")
    _, channels, length = u.shape
    for name, k in (("k_fwd", k_fwd), ("k_rev", k_rev)):
        if k is not None and tuple(k.shape) != (channels, length):
            raise ValueError(f"long_conv: {name} must be (H, L) = ({channels}, {length}), got {tuple(k.shape)}")


def long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor] = None,
              skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-channel long convolution of ``u`` (B, H, L) with kernels ``k_fwd``/``k_rev`` (H, L).

    Causal (``k_rev is None``):  ``y[:, h, t] = Σ_{s≤t} k_fwd[h, t−s] · u[:, h, s]``.
    Bidirectional: adds ``Σ_{s>t} k_rev[h, s−t−1] · u[:, h, s]`` (the reverse filter starts at lag
    one, so the diagonal is counted once and ``k_rev[:, L−1]`` is never used).
    ``skip`` (H,) adds ``skip[h] · u[:, h, t]``.

    Computed with real FFTs of size 2L: input and kernel are zero-padded, so nothing wraps around
    (an FFT of size L would silently alias the end of the sequence onto its start). Everything runs
    in fp32 at least (fp16/bf16 inputs are upcast, because bf16 FFTs lose ~1e-2 relative accuracy;
    float64 stays float64, which the exactness tests use); the result is returned in ``u``'s dtype.
    """
    check_long_conv_inputs(u, k_fwd, k_rev)
    length = u.shape[-1]
    n = 2 * length
    dtype = torch.promote_types(u.dtype, torch.float32)
    kernel = k_fwd.to(dtype)
    if k_rev is not None:
        # Length-2L kernel [k_fwd, flip(k_rev)]: index n−1−j holds k_rev[j], i.e. lag −(j+1).
        kernel = torch.cat([kernel, k_rev.to(dtype).flip(-1)], dim=-1)
    u_wide = u.to(dtype)
    y = torch.fft.irfft(torch.fft.rfft(u_wide, n=n) * torch.fft.rfft(kernel, n=n), n=n)[..., :length]
    if skip is not None:
        y = y + skip.to(dtype)[:, None] * u_wide
    return y.to(u.dtype)
