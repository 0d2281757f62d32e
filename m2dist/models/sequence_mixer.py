"""M2 sequence mixer: gated implicit long convolution (spec §1.6), causal or bidirectional.

Dataflow for u (B, L, H):
    [u ← LayerNorm(u)]                                   only with pre_norm
    x1, x2, v = split(short_conv(in_proj(u)))            channel order x1 | x2 | v
    y = x2 ⊙ long_conv(x1 ⊙ v, filter)                   filter.D is the skip
    [y += long_conv(u, residual_filter)]                 only with residual_long_conv
    out = out_proj(y)

Parameters:
  in_proj     nn.Linear(H, 3H) with bias; output channels [0:H] = x1 (input gate),
              [H:2H] = x2 (output gate), [2H:3H] = v
  short_conv  depthwise nn.Conv1d(3H, 3H, k, groups=3H), left-padded so it is causal (in BERT too,
              as in the public code)
  filter      ImplicitFilter over H channels (see hyena_filter.py); bidirectional unless causal
  residual_filter  a second, independent ImplicitFilter (residual_long_conv only)
  out_proj    nn.Linear(H, H) with bias
  norm        LayerNorm(H) (pre_norm only)
Everything between in_proj and out_proj is per channel, which is what tensor parallelism shards
(m2dist/parallel/plan.py: in_proj column-parallel with matching x1/x2/v slices, filters and short_conv
sliced by channel, ``core`` fed this rank's channels of u, out_proj row-parallel).

Padding: positions with attention_mask == 0 are zeroed at the mixer input, after the in-projection
(its bias) and before each long convolution (the short conv's bias), so they contribute nothing to
real tokens. This departs from the public code, which lets pads leak (m2 issues #19, #43).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from m2dist.models.hyena_filter import ImplicitFilter
from m2dist.models.init import init_linear_
from m2dist.ops import mixer_core
from m2dist.ops.long_conv import long_conv as reference_long_conv


class MixerCore(nn.Module):
    """Everything between the two projections (``m2dist.ops.mixer_core``). Parameter-free -- the mixer passes its
    weights in, so state-dict names do not depend on it -- and a module so that code outside the model can act on it:
    a kernel converter swaps it for a fused one, a parallel plan hooks its inputs."""

    def forward(self, z: torch.Tensor, u: Optional[torch.Tensor], conv_weight: torch.Tensor,
                conv_bias: torch.Tensor, filt, residual_filt=None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        return mixer_core(z, u, conv_weight, conv_bias, filt, residual_filt, keep, long_conv=self.long_conv)

    def long_conv(self, u: torch.Tensor, k_fwd: torch.Tensor, k_rev: Optional[torch.Tensor] = None,
                  skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The long convolution this core runs (``m2dist.ops.long_conv``; a kernel-backed core overrides it, and a
        core replaced from outside, e.g. by context parallelism, calls it)."""
        return reference_long_conv(u, k_fwd, k_rev, skip)


class M2SequenceMixer(nn.Module):
    def __init__(self, hidden_size: int, max_seq_len: int, *, causal: bool, filter_order: int = 128,
                 filter_emb_dim: int = 5, filter_w: float = 10.0, short_conv_size: int = 3,
                 residual_long_conv: bool = True, pre_norm: bool = False, layer_norm_eps: float = 1e-5,
                 init: str = "paper"):
        super().__init__()
        h = hidden_size
        self.hidden_size, self.causal = h, causal
        self.norm = nn.LayerNorm(h, eps=layer_norm_eps) if pre_norm else None
        self.in_proj = nn.Linear(h, 3 * h)
        self.short_conv = nn.Conv1d(3 * h, 3 * h, short_conv_size, groups=3 * h, padding=short_conv_size - 1)
        filter_args = dict(channels=h, l_max=max_seq_len, order=filter_order, emb_dim=filter_emb_dim, w=filter_w,
                           bidirectional=not causal)
        self.filter = ImplicitFilter(**filter_args)
        self.residual_filter = ImplicitFilter(**filter_args) if residual_long_conv else None
        self.core = MixerCore()
        self.out_proj = nn.Linear(h, h)
        init_linear_(self.in_proj, init)
        init_linear_(self.out_proj, init)

    def forward(self, u: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        length = u.shape[1]
        if self.norm is not None:
            u = self.norm(u)
        keep = None if attention_mask is None else attention_mask.to(u.dtype)  # (B, L)
        if keep is not None:
            u = u * keep[:, :, None]
        z = self.in_proj(u)
        if keep is not None:
            z = z * keep[:, :, None]
        filt = (*self.filter(length), self.filter.D)
        residual_in = residual_filt = None
        if self.residual_filter is not None:
            residual_in = u
            residual_filt = (*self.residual_filter(length), self.residual_filter.D)
        y = self.core(z, residual_in, self.short_conv.weight, self.short_conv.bias, filt, residual_filt, keep)
        return self.out_proj(y)

