"""Implicit Hyena long-convolution filter (spec §1.6): a sine-activated MLP of positional features,
modulated by a per-channel exponential decay.

    k[h, t] = MLP(z(t))[h] · exp(−t/(l_max−1) · |δ_h|)

Parameters (names are a contract with m2dist.parallel and the kernels):
  z                      (l_max, emb_dim)   positional features; trainable, as in the public code
  freq                   (order,)           Sin frequency, shared by every activation of both MLPs
  mlp_fwd.layers.{0,1,2} Linear(emb_dim→order), Linear(order→order) ×2, with bias
  mlp_fwd.out.weight     (H, order)         no bias; row h produces channel h's taps
  mlp_rev.*              the same, bidirectional filters only (the reverse-direction taps)
  D                      (H,)               per-channel skip, y += D·u
Buffers: t (l_max, 1) normalised time; decay (H,) = |δ|, fixed (the modulation is not learned).
Everything after the MLP's hidden layers is per channel, so slicing rows of ``out.weight``, ``decay``
and ``D`` gives exactly the filters of those channels (channel-sharded tensor parallelism).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from m2dist.models.init import init_linear_


def positional_features(l_max: int, emb_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` (l_max, emb_dim): [t, Re exp(−i f 2π n/l_max) …, Im …] for bands f, and ``t`` (l_max, 1)."""
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"filter_emb_dim must be odd and >= 3 (time + Re/Im pairs), got {emb_dim}")
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, l_max)[:, None]
    angle = 2 * math.pi * torch.arange(l_max, dtype=torch.float32)[:, None] / l_max
    f = torch.linspace(1e-4, bands - 1, bands)[None]
    z = torch.cat([t, torch.cos(f * angle), -torch.sin(f * angle)], dim=-1)
    return z, t


class RowsLinear(nn.Linear):
    """An nn.Linear that can compute a subset of its output features (``rows``, a slice of ``weight``'s rows):
    a rank that needs only some channels' taps pays only for those. Still a module call, so a hook on it applies."""

    def forward(self, x: torch.Tensor, rows: Optional[slice] = None) -> torch.Tensor:
        if rows is None:
            return super().forward(x)
        return F.linear(x, self.weight[rows], None if self.bias is None else self.bias[rows])


class FilterMLP(nn.Module):
    """Positional features → per-channel taps: three Linear+Sin layers, then Linear(order→H, no bias)."""

    def __init__(self, emb_dim: int, order: int, channels: int, num_hidden: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(emb_dim, order)] + [nn.Linear(order, order) for _ in range(num_hidden)]
        )
        self.out = RowsLinear(order, channels, bias=False)
        for layer in [*self.layers, self.out]:
            init_linear_(layer, "paper")

    def forward(self, z: torch.Tensor, freq: torch.Tensor, rows: Optional[slice] = None) -> torch.Tensor:
        for layer in self.layers:
            z = torch.sin(freq * layer(z))
        return self.out(z, rows)


class ImplicitFilter(nn.Module):
    def __init__(self, channels: int, l_max: int, order: int = 128, emb_dim: int = 5, w: float = 10.0,
                 bidirectional: bool = True):
        super().__init__()
        self.channels, self.l_max = channels, l_max
        z, t = positional_features(l_max, emb_dim)
        self.z = nn.Parameter(z)
        self.register_buffer("t", t, persistent=False)
        self.freq = nn.Parameter(torch.full((order,), float(w)))
        self.mlp_fwd = FilterMLP(emb_dim, order, channels)
        self.mlp_rev = FilterMLP(emb_dim, order, channels) if bidirectional else None
        # δ from ln(1e-2)/1.5 (slow, channel 0) to ln(1e-2)/0.3 (fast, channel H−1): each channel
        # decays to 1% of its start over a fixed fraction of l_max.
        target = math.log(1e-2)
        self.register_buffer("decay", torch.linspace(target / 1.5, target / 0.3, channels).abs(), persistent=False)
        self.D = nn.Parameter(torch.randn(channels))

    def forward(self, length: int, channels: Optional[slice] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(k_fwd, k_rev)``, each (H, length); ``k_rev`` is None for a causal filter. ``channels``: only those
        rows (the hidden layers still run at every position; only the output layer, the dominant cost when
        H >> order, and the decay are restricted). Context parallelism asks each rank for its channels over the
        global length (``m2dist.parallel.styles.ContextFilter``)."""
        if length > self.l_max:
            raise ValueError(f"sequence length {length} exceeds the filter's l_max={self.l_max} (model.max_seq_len)")
        decay = self.decay if channels is None else self.decay[channels]
        # fp32 even under autocast: the taps feed an fp32 FFT, and the MLP is tiny, so bf16 would only add a cast
        # kernel per weight and step (~70 launches per layer, a visible share of a step's CPU time on a GPU).
        with torch.autocast(self.z.device.type, enabled=False):
            z = self.z[:length]
            modulation = torch.exp(-self.t[:length] * decay)  # (L, H)
            k_fwd = (self.mlp_fwd(z, self.freq, channels) * modulation).transpose(0, 1)
            if self.mlp_rev is None:
                return k_fwd, None
            return k_fwd, (self.mlp_rev(z, self.freq, channels) * modulation).transpose(0, 1)
