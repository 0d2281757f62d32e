"""Context parallelism (CP) for the M2 sequence mixer's core: each rank holds L/CP consecutive tokens (issue 16).

``context_parallel_mixer_core`` has the contract of ``m2dist.ops.mixer_core.mixer_core`` (spec §1.6) on a sequence
shard: rank ``r`` of the CP group holds tokens ``[r*L/CP, (r+1)*L/CP)`` (rank order = sequence order). It implements
method (a) of the issue, the all-to-all (``docs/context_parallel.md`` derives why, with the volumes of (b) and (c)):

    z (B, L/CP, 3H) --halo of k-1 tokens from rank r-1--> causal short conv --> x1, x2, v      (sequence-sharded)
    v = x1 * v * keep
    [v | u]  --all-to-all-->  (B, 2, H/CP, L)  full-length FFT long convs of this rank's H/CP channels (+ D skips)
             <--all-to-all--  [conv(v) | conv(u)]                                               (back to sequences)
    y = x2 * conv(v) + conv(u)                                                                  (sequence-sharded)

Only the halo needs the previous rank: the short conv is causal in both directions (the reference left-pads it by
k-1 and keeps the first L outputs for BERT and GPT alike: ``mixer_core``, spec §1.6 step 3 and §7.2), so the
issue's "halo from both neighbours when bidirectional" does not arise. Bidirectionality lives entirely in the long
conv's ``k_rev``, which runs on the full length here.

The gates stay in the sequence layout: the wire carries only the long convs' inputs and outputs (2 tensors of H
channels each way with the residual long conv, 1 without), never x2.

Gradients: every collective is an autograd Function (the all-to-all's backward is the same all-to-all of the
gradient, the halo's backward sends the halo gradient back to the previous rank). Gradients of replicated inputs
(``conv_weight``/``conv_bias``, full-width filters, the filter MLP's parameters) are this rank's part; the true
gradient is their sum over the CP group, which the data-parallel gradient reduction provides when it runs over
DP x CP (megatron-core's ``get_data_parallel_group(with_context_parallel=True)``), the loss being normalised by
the global target count.

Filters: a rank convolves only its channels ``context_channels(H, rank, CP)``, over the whole length. ``filt`` may
hold all H rows (sliced here; fine but it generates CP times the taps it needs) or just the rank's H/CP rows, the
efficient form, which ``ImplicitFilter(length, channels=context_channels(...))`` generates (its hidden layers at all
L positions, computed on every rank, and only this rank's rows of the output layer and decay; the trainer's models
get it through the plan's ``styles.ContextFilter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from m2dist.ops.long_conv import long_conv as reference_long_conv
from m2dist.ops.mixer_core import Filter


# ---------------------------------------------------------------- bookkeeping
@dataclass
class CommCounter:
    """Bytes this rank sends, by phase and kind (``halo``, ``all_to_all``); what the volume model is checked
    against. Data a rank keeps for itself (its own chunk of an all-to-all) is not counted."""

    forward: dict = field(default_factory=dict)
    backward: dict = field(default_factory=dict)

    def add(self, phase: str, kind: str, nbytes: int) -> None:
        book = getattr(self, phase)
        book[kind] = book.get(kind, 0) + int(nbytes)

    @property
    def total(self) -> int:
        return sum(self.forward.values()) + sum(self.backward.values())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _group_info(group) -> tuple:
    group = group if group is not None else dist.group.WORLD
    return group, dist.get_rank(group), dist.get_world_size(group)


def context_channels(hidden: int, rank: int, size: int) -> slice:
    """The channels a CP rank convolves: the ``rank``-th of ``size`` contiguous slices of ``hidden``."""
    if hidden % size:
        raise ValueError(f"hidden size {hidden} (per tensor-parallel rank) is not divisible by parallel.context={size}")
    width = hidden // size
    return slice(rank * width, (rank + 1) * width)


def split_sequence(x: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """This CP rank's consecutive block of ``x`` along ``dim`` (the loader's slicing; rank order = sequence order)."""
    length = x.shape[dim]
    if length % size:
        raise ValueError(f"sequence length {length} is not divisible by parallel.context={size}")
    return x.narrow(dim, rank * (length // size), length // size)


# ---------------------------------------------------------------- collectives
def _all_to_all_p2p(out: torch.Tensor, inp: torch.Tensor, group, rank: int, size: int) -> None:
    """``all_to_all_single`` over dim 0 from point-to-point sends, for backends without the collective."""
    out[rank].copy_(inp[rank])
    ops = []
    for peer in range(size):
        if peer != rank:
            g = dist.get_global_rank(group, peer)
            ops.append(dist.P2POp(dist.isend, inp[peer], g, group))
            ops.append(dist.P2POp(dist.irecv, out[peer], g, group))
    for work in dist.batch_isend_irecv(ops):
        work.wait()


# Backends whose all_to_all_single is used (gloo has it in this torch, 2.14; older gloo builds did not).
_COLLECTIVE_ALL_TO_ALL = ("nccl", "gloo")


def all_to_all_dim0(x: torch.Tensor, group=None, method: str = "auto") -> torch.Tensor:
    """Chunk ``i`` of dim 0 (size CP) goes to rank ``i``; chunk ``i`` of the result came from rank ``i``. Not
    differentiable by itself (``_AllToAll`` is). ``method``: ``collective`` (``all_to_all_single``), ``p2p``
    (isend/irecv pairs), ``auto`` (the collective where the backend has it)."""
    group, rank, size = _group_info(group)
    if x.shape[0] != size:
        raise ValueError(f"all_to_all_dim0: dim 0 must be the CP size {size}, got shape {tuple(x.shape)}")
    x = x.contiguous()
    out = torch.empty_like(x)
    if method == "auto":
        method = "collective" if dist.get_backend(group) in _COLLECTIVE_ALL_TO_ALL else "p2p"
    if method == "collective":
        dist.all_to_all_single(out, x, group=group)
    elif method == "p2p":
        _all_to_all_p2p(out, x, group, rank, size)
    else:
        raise ValueError(f"all_to_all_dim0: unknown method {method!r} (auto, collective, p2p)")
    return out


class _AllToAll(torch.autograd.Function):
    """All-to-all over dim 0. It is its own adjoint: rank r's output chunk i is rank i's input chunk r, so the
    gradient of rank i's input chunk r is rank r's output-gradient chunk i -- the same all-to-all, backward."""

    @staticmethod
    def forward(ctx, x, group, counter):
        ctx.group, ctx.counter = group, counter
        if counter is not None:
            counter.add("forward", "all_to_all", _nbytes(x) * (x.shape[0] - 1) // x.shape[0])
        return all_to_all_dim0(x, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.counter is not None:
            ctx.counter.add("backward", "all_to_all", _nbytes(grad) * (grad.shape[0] - 1) // grad.shape[0])
        return all_to_all_dim0(grad, ctx.group), None, None


class _HaloFromPrevious(torch.autograd.Function):
    """The last ``width`` tokens (dim 1) of the previous rank's ``x``; zeros on rank 0 (the causal zero padding).
    Backward sends the halo's gradient back to the previous rank, which adds it to its last ``width`` tokens."""

    @staticmethod
    def forward(ctx, x, width, group, counter):
        group, rank, size = _group_info(group)
        ctx.group, ctx.rank, ctx.size, ctx.counter, ctx.width = group, rank, size, counter, width
        tail = x[:, x.shape[1] - width:].contiguous()
        halo = torch.zeros_like(tail)
        ops = []
        if rank + 1 < size:
            ops.append(dist.P2POp(dist.isend, tail, dist.get_global_rank(group, rank + 1), group))
            if counter is not None:
                counter.add("forward", "halo", _nbytes(tail))
        if rank > 0:
            ops.append(dist.P2POp(dist.irecv, halo, dist.get_global_rank(group, rank - 1), group))
        for work in dist.batch_isend_irecv(ops) if ops else ():
            work.wait()
        ctx.x_shape = x.shape
        return halo

    @staticmethod
    def backward(ctx, grad_halo):
        group, rank, size, width = ctx.group, ctx.rank, ctx.size, ctx.width
        grad_halo = grad_halo.contiguous()
        grad_tail = torch.zeros_like(grad_halo)
        ops = []
        if rank > 0:
            ops.append(dist.P2POp(dist.isend, grad_halo, dist.get_global_rank(group, rank - 1), group))
            if ctx.counter is not None:
                ctx.counter.add("backward", "halo", _nbytes(grad_halo))
        if rank + 1 < size:
            ops.append(dist.P2POp(dist.irecv, grad_tail, dist.get_global_rank(group, rank + 1), group))
        for work in dist.batch_isend_irecv(ops) if ops else ():
            work.wait()
        grad_x = grad_halo.new_zeros(ctx.x_shape)
        grad_x[:, ctx.x_shape[1] - width:] = grad_tail
        return grad_x, None, None, None


def _sequence_to_channels(x: torch.Tensor, group, size: int, counter) -> torch.Tensor:
    """(B, L/CP, G, C) sequence-sharded -> (B, G, C/CP, L) channel-sharded, channels first for the long conv."""
    b, lc, g, c = x.shape
    send = x.reshape(b, lc, g, size, c // size).permute(3, 0, 2, 4, 1)  # chunk j: channel block j, to rank j
    recv = _AllToAll.apply(send.contiguous(), group, counter)  # chunk i: sequence block i, from rank i
    return recv.permute(1, 2, 3, 0, 4).reshape(b, g, c // size, size * lc)


def _channels_to_sequence(y: torch.Tensor, group, size: int, counter) -> torch.Tensor:
    """(B, G, C/CP, L) channel-sharded -> (B, L/CP, G, C) sequence-sharded: the inverse of the above."""
    b, g, cc, length = y.shape
    send = y.reshape(b, g, cc, size, length // size).permute(3, 0, 4, 1, 2)  # chunk i: sequence block i, to rank i
    recv = _AllToAll.apply(send.contiguous(), group, counter)  # chunk j: channel block j, from rank j
    return recv.permute(1, 2, 3, 0, 4).reshape(b, length // size, g, size * cc)


# ---------------------------------------------------------------- filters
def _local_filter(filt: Filter, hidden: int, channels: slice, length: int, name: str) -> Filter:
    """``filt`` restricted to this rank's channels: all H rows are sliced, H/CP rows are taken as they are."""
    k_fwd, k_rev, skip = filt
    width = channels.stop - channels.start
    out = []
    for label, t in ((f"{name} k_fwd", k_fwd), (f"{name} k_rev", k_rev), (f"{name} D", skip)):
        if t is None:
            out.append(None)
            continue
        if t.shape[-1] != length and t.dim() == 2:
            raise ValueError(f"context_parallel_mixer_core: {label} has {t.shape[-1]} taps, the global sequence "
                             f"length is {length} (L/CP={length // (hidden // width)} tokens on each rank)")
        if t.shape[0] == hidden:
            t = t[channels]
        elif t.shape[0] != width:
            raise ValueError(f"context_parallel_mixer_core: {label} has {t.shape[0]} channels; expected all "
                             f"{hidden} or this rank's {width}")
        out.append(t)
    return tuple(out)


# ---------------------------------------------------------------- the core
def context_parallel_mixer_core(z_local: torch.Tensor, u_local: Optional[torch.Tensor], conv_weight: torch.Tensor,
                                conv_bias: torch.Tensor, filt: Filter, residual_filt: Optional[Filter] = None,
                                keep_local: Optional[torch.Tensor] = None, group=None, *,
                                counter: Optional[CommCounter] = None,
                                long_conv: Callable[..., torch.Tensor] = reference_long_conv) -> torch.Tensor:
    """``mixer_core`` on this CP rank's tokens (see the module docstring).

    z_local (B, L/CP, 3H), u_local (B, L/CP, H) or None, keep_local (B, L/CP) or None: this rank's consecutive
    block of the global tensors. conv_weight (3H, 1, k), conv_bias (3H,) replicated. ``filt``/``residual_filt``
    ``(k_fwd, k_rev, D)`` over the global length L, with all H rows or this rank's H/CP (``context_channels``).
    Returns y (B, L/CP, H), this rank's block of ``mixer_core``'s output. ``group``: the CP process group (None:
    the world). ``counter`` accumulates the bytes this rank sends. ``long_conv``: any function with
    ``m2dist.ops.long_conv``'s contract, run on (B, H/CP, L) -- a GPU kernel passes its own, as to ``mixer_core``.
    """
    if (u_local is None) != (residual_filt is None):
        raise ValueError("context_parallel_mixer_core: u and residual_filt must be given together")
    group, rank, size = _group_info(group)
    batch, local_len, three_h = z_local.shape
    hidden = three_h // 3
    channels = context_channels(hidden, rank, size)
    length = local_len * size
    k = conv_weight.shape[-1]
    if local_len < k - 1:
        raise ValueError(f"context_parallel_mixer_core: {local_len} tokens per rank (L={length}, parallel.context="
                         f"{size}) is fewer than the short conv's halo of {k - 1}")
    filt = _local_filter(filt, hidden, channels, length, "filt")
    if residual_filt is not None:
        residual_filt = _local_filter(residual_filt, hidden, channels, length, "residual_filt")

    # Short conv: the first k-1 inputs of this block's outputs are the previous rank's last k-1 tokens.
    zt = z_local.transpose(1, 2)
    if k > 1:
        halo = _HaloFromPrevious.apply(z_local, k - 1, group, counter)
        zt = torch.cat([halo.transpose(1, 2), zt], dim=-1)
    zc = F.conv1d(zt, conv_weight, conv_bias, groups=three_h)  # (B, 3H, L/CP): no padding, the halo is the pad
    x1, x2, v = zc.split(hidden, dim=1)
    v = v * x1
    if keep_local is not None:
        v = v * keep_local[:, None, :].to(v.dtype)

    # Long convs on this rank's channels over the full length. One all-to-all each way carries both inputs when
    # they share a dtype (under autocast z is bf16 and u may not be; then they travel separately).
    v_seq = v.transpose(1, 2)  # (B, L/CP, H)
    if u_local is not None and u_local.dtype == v_seq.dtype:
        vu = _sequence_to_channels(torch.stack([v_seq, u_local], dim=2), group, size, counter)
        y_ch = torch.stack([long_conv(vu[:, 0], *filt), long_conv(vu[:, 1], *residual_filt)], dim=1)
        y_seq = _channels_to_sequence(y_ch, group, size, counter)
        main, residual = y_seq[:, :, 0], y_seq[:, :, 1]
    else:
        v_ch = _sequence_to_channels(v_seq[:, :, None], group, size, counter)[:, 0]
        main = _channels_to_sequence(long_conv(v_ch, *filt)[:, None], group, size, counter)[:, :, 0]
        residual = None
        if u_local is not None:
            u_ch = _sequence_to_channels(u_local[:, :, None], group, size, counter)[:, 0]
            residual = _channels_to_sequence(long_conv(u_ch, *residual_filt)[:, None], group, size, counter)[:, :, 0]
    y = main * x2.transpose(1, 2)
    if residual is not None:
        y = y + residual
    return y
