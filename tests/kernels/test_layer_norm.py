"""The fused LayerNorm against F.layer_norm in float64: the output (rounded to the requested dtype), and the
gradients of x, weight and bias; and ``FusedLayerNorm`` taking the kernel exactly where it should."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from m2dist.kernels import layer_norm as ln_kernel
from m2dist.kernels import modules
from m2dist.kernels.layer_norm import layer_norm
from tests.kernels._ref import rel_err

# Relative to the norm of each tensor: fp32 math throughout is ~1e-6; a bf16 output or gradient rounds to ~4e-3.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _check(shape, x_dtype, out_dtype, device="cpu"):
    g = torch.Generator().manual_seed(0)
    N = shape[-1]
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(device, x_dtype).requires_grad_()
    w = (torch.randn(N, generator=g) + 1).to(device).requires_grad_()
    b = torch.randn(N, generator=g).to(device).requires_grad_()
    y = layer_norm(x, w, b, 1e-5, out_dtype)
    dy = torch.randn(shape, generator=g).to(device, out_dtype)
    (y.float() * dy.float()).sum().backward()

    xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
    yr = F.layer_norm(xr, (N,), wr, br, 1e-5)
    (yr * dy.cpu().double()).sum().backward()
    assert y.dtype == out_dtype and y.shape == x.shape
    assert rel_err(y.cpu(), yr) < TOL[out_dtype]
    assert x.grad.dtype == x_dtype and w.grad.dtype == w.dtype
    # dy is rounded to out_dtype on both sides, so only x's dtype and the kernel's fp32 sums differ.
    assert rel_err(x.grad.cpu(), xr.grad) < TOL[x_dtype]
    assert rel_err(w.grad.cpu(), wr.grad) < TOL[torch.float32]
    assert rel_err(b.grad.cpu(), br.grad) < TOL[torch.float32]


@pytest.mark.parametrize("x_dtype,out_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float32),
                                               (torch.bfloat16, torch.bfloat16)])
def test_layer_norm_matches_reference(x_dtype, out_dtype):
    # N=100: not a power of two (masked columns); 15 rows: the last backward program has fewer rows than the others.
    _check((3, 5, 100), x_dtype, out_dtype)


def test_layer_norm_rejects_mismatched_weight():
    with pytest.raises(ValueError, match=r"weight and bias must have shape \(8,\)"):
        layer_norm(torch.randn(2, 8), torch.ones(4), torch.zeros(4), 1e-5, torch.bfloat16)


def _spy(monkeypatch) -> list:
    calls, real = [], ln_kernel.layer_norm
    monkeypatch.setattr(ln_kernel, "layer_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_fused_layer_norm_module(monkeypatch):
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)
    calls = _spy(monkeypatch)
    torch.manual_seed(0)
    ref = nn.LayerNorm(32).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    fused = nn.LayerNorm(32).to(torch.bfloat16)
    fused.load_state_dict(ref.state_dict())
    fused.__class__ = modules.FusedLayerNorm
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    y = fused(x)  # bf16 outside autocast: the kernel, output in x's dtype
    assert calls and y.dtype == torch.bfloat16
    assert rel_err(y.float(), F.layer_norm(x.float(), (32,), ref.weight.float(), ref.bias.float(), ref.eps)) < TOL[
        torch.bfloat16]

    calls.clear()
    fused.float()
    y32 = fused(x.float())  # fp32 outside autocast: nothing to gain, the reference
    assert not calls and torch.equal(y32, F.layer_norm(x.float(), (32,), fused.weight, fused.bias, fused.eps))


def test_fused_layer_norm_on_cpu_is_the_reference():
    ref = nn.LayerNorm(16)
    fused = nn.LayerNorm(16)
    fused.__class__ = modules.FusedLayerNorm
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    assert torch.equal(fused(x), ref(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layer_norm_on_gpu():
    _check((16 * 2048, 1024), torch.float32, torch.bfloat16, device="cuda")
    _check((4096, 768), torch.bfloat16, torch.bfloat16, device="cuda")
    _check((1000, 100), torch.float32, torch.float32, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_layer_norm_under_autocast_on_gpu():
    """Under autocast the reference gives an fp32 output the next matmul casts to bf16; the fused one gives that
    bf16 directly, and the same gradients."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.LayerNorm(1024), nn.Linear(1024, 256)).cuda()
    fused = nn.Sequential(nn.LayerNorm(1024), nn.Linear(1024, 256)).cuda()
    fused.load_state_dict(ref.state_dict())
    fused[0].__class__ = modules.FusedLayerNorm
    x = torch.randn(8, 512, 1024, device="cuda")
    outs = []
    for model in (ref, fused):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(xi)
        y.float().square().sum().backward()
        outs.append((y, xi.grad, model[0].weight.grad, model[0].bias.grad))
    for a, r in zip(*outs[::-1]):
        assert a.dtype == r.dtype and rel_err(a, r) < TOL[torch.bfloat16]
