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
