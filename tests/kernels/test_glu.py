"""The fused GELU GLU against F.gelu(gate) * value in float64, forward and input gradient."""
import pytest
import torch
import torch.nn.functional as F

from m2dist.kernels import accelerate, modules
from m2dist.kernels.glu import gelu_glu
from m2dist.models.monarch_mlp import MonarchGLU
from tests.kernels._ref import rel_err

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2}


def _check(shape, dtype, device="cpu"):
    g = (torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 2).to(device, dtype).requires_grad_()
    a = gelu_glu(g)
    da = torch.randn(a.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    (a.float() * da.float()).sum().backward()
    ref = g.detach().cpu().double().requires_grad_()
    gate, value = ref.chunk(2, dim=-1)
    ar = F.gelu(gate) * value
    (ar * da.cpu().double()).sum().backward()
    assert a.dtype == dtype and a.shape == ar.shape
    assert rel_err(a.cpu(), ar) < TOL[dtype]
    assert g.grad.dtype == dtype and rel_err(g.grad.cpu(), ref.grad) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_glu_matches_reference(dtype):
    _check((3, 5, 2 * 100), dtype)  # I=100: not a multiple of the tile


def test_glu_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        gelu_glu(torch.randn(2, 7))


def test_monarch_glu_takes_the_fused_path(monkeypatch):
    torch.manual_seed(0)
    mlp = MonarchGLU(16, 32, nblocks=4)
    x = torch.randn(2, 3, 16)
    y_ref = mlp(x)
    accelerate(mlp)
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)
    calls = []
    monkeypatch.setattr("m2dist.kernels.glu.gelu_glu", lambda g: calls.append(1) or gelu_glu(g))
    y = mlp(x)  # fp32 outside autocast: the block-diagonal layers keep their einsum path
    assert calls and rel_err(y, y_ref) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_glu_on_gpu():
    _check((4096, 2 * 3072), torch.bfloat16, device="cuda")
    _check((1000, 2 * 100), torch.float32, device="cuda")
