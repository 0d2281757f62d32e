"""Naive float64 references the kernels are checked against (independent of m2dist.ops / m2dist.monarch)."""
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def naive_long_conv(u, k_fwd, k_rev=None, skip=None):
    """O(L^2) definition: y[t] = sum_{s<=t} kf[t-s] u[s] + sum_{s>t} kr[s-t-1] u[s] + skip u[t]."""
    L = u.shape[-1]
    t = torch.arange(L)
    d = t[:, None] - t[None, :]  # t - s
    T = torch.where(d >= 0, k_fwd[:, d.clamp(min=0)], torch.zeros((), dtype=k_fwd.dtype))  # (H, L, L)
    if k_rev is not None:
        T = T + torch.where(d < 0, k_rev[:, (-d - 1).clamp(min=0)], torch.zeros((), dtype=k_rev.dtype))
    y = torch.einsum("hts,bhs->bht", T, u)
    if skip is not None:
        y = y + skip[None, :, None] * u
    return y


def naive_block_diagonal(x, w, b=None):
    nb, q, p = w.shape
    y = torch.einsum("mgp,gqp->mgq", x.reshape(-1, nb, p), w).reshape(*x.shape[:-1], nb * q)
    return y if b is None else y + b


def naive_short_conv(z, weight, bias):
    """Causal depthwise conv along L of z (B, L, C): zc[t] = bias + sum_j weight[c, 0, j] * z[t - (k-1) + j]."""
    k = weight.shape[-1]
    out = bias.to(z.dtype).expand_as(z).clone()
    for j in range(k):
        shift = k - 1 - j
        zs = torch.cat([torch.zeros_like(z[:, :shift]), z[:, : z.shape[1] - shift]], dim=1)
        out = out + weight[:, 0, j].to(z.dtype) * zs
    return out


def naive_mixer_core(z, u, conv_w, conv_b, filt, residual_filt=None, keep=None):
    """The M2 mixer core token-major (spec §1.6): y = x2 * conv(x1 * v * keep, filt) [+ conv(u, residual_filt)]."""
    H = z.shape[-1] // 3
    zc = naive_short_conv(z, conv_w, conv_b)
    x1, x2, v = zc[..., :H], zc[..., H:2 * H], zc[..., 2 * H:]
    w = x1 * v
    if keep is not None:
        w = w * keep[..., None]
    y = x2 * naive_long_conv(w.transpose(1, 2), *filt).transpose(1, 2)
    if u is not None:
        y = y + naive_long_conv(u.transpose(1, 2), *residual_filt).transpose(1, 2)
    return y
