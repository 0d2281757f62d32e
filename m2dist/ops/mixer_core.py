"""The M2 sequence mixer's core, between its two projections (spec §1.6): short conv, gates, long convs, skips.

Token-major in and out, as the projections produce and consume it: z (B, L, 3H) = in_proj output (x1 | x2 | v),
u (B, L, H) the residual long conv's input or None, returns y (B, L, H). ``m2dist.kernels.accelerate`` swaps the
mixer's core for one that runs this whole body as fused Triton passes around cuFFT (``m2dist/kernels/mixer_core.py``,
tested against it; it returns z's dtype, bf16 under autocast, where this body promotes to the residual input's
dtype), or this body with a fused long convolution passed as ``long_conv``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from m2dist.ops.long_conv import long_conv as reference_long_conv

Filter = tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]  # (k_fwd (H, L), k_rev (H, L) or None, D (H,))


def check_mixer_core_inputs(u: Optional[torch.Tensor], residual_filt: Optional[Filter]) -> None:
    if (u is None) != (residual_filt is None):
        raise ValueError("mixer_core: u and residual_filt must be given together")


def mixer_core(z: torch.Tensor, u: Optional[torch.Tensor], conv_weight: torch.Tensor, conv_bias: torch.Tensor,
               filt: Filter, residual_filt: Optional[Filter] = None, keep: Optional[torch.Tensor] = None,
               long_conv: Callable[..., torch.Tensor] = reference_long_conv) -> torch.Tensor:
    """``y = x2 * long_conv(x1 * v * keep, filt) [+ long_conv(u, residual_filt)]`` with x1, x2, v the causal
    depthwise short conv of z (weight (3H, 1, k), bias (3H,)); ``keep`` (B, L) zeroes padded positions of x1 * v.
    ``u`` and ``residual_filt`` come together (the residual long conv) or not at all. ``long_conv`` is any function
    with ``m2dist.ops.long_conv``'s contract (a kernel passes its own)."""
    check_mixer_core_inputs(u, residual_filt)
    length, hidden = z.shape[1], z.shape[2] // 3
    k = conv_weight.shape[-1]
    # Channels first for the convolutions; the first L outputs of the padded conv are causal.
    zc = F.conv1d(z.transpose(1, 2), conv_weight, conv_bias, padding=k - 1, groups=3 * hidden)[..., :length]
    x1, x2, v = zc.split(hidden, dim=1)
    v = v * x1
    if keep is not None:
        v = v * keep[:, None, :].to(v.dtype)
    y = long_conv(v, *filt) * x2
    if u is not None:
        y = y + long_conv(u.transpose(1, 2), *residual_filt)
    return y.transpose(1, 2)
