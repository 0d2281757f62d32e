import pytest
import torch

from m2dist.kernels.block_diagonal import block_diagonal_matmul
from tests.kernels._ref import naive_block_diagonal, rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _check(M, nb, p, q, dtype, bias, device="cpu", lead=()):
    g = torch.Generator().manual_seed(M * 7 + nb)
    x = torch.randn(*lead, M, nb * p, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(nb, q, p, generator=g) / p**0.5).to(device, dtype).requires_grad_()
    b = torch.randn(nb * q, generator=g).to(device, dtype).requires_grad_() if bias else None
    y = block_diagonal_matmul(x, w, b)
    dy = torch.randn(y.shape, generator=g).to(device, dtype)
    (y * dy).sum().backward()

    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if bias else None
    yd = naive_block_diagonal(xd, wd, bd)
    (yd * dy.double()).sum().backward()
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == yd.shape
    assert rel_err(y, yd) < tol
    assert rel_err(x.grad, xd.grad) < tol
    assert rel_err(w.grad, wd.grad) < tol
    if bias:
        assert rel_err(b.grad, bd.grad) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_dense_reference(dtype, bias):
    # ragged sizes: every tile edge is masked; M=40 >= 32 takes the split-K weight-gradient path
    _check(M=40, nb=2, p=20, q=24, dtype=dtype, bias=bias)


def test_leading_dims_and_single_block():
    _check(M=9, nb=1, p=16, q=8, dtype=torch.float32, bias=True, lead=(2,))


def test_matches_project_layer():
    from m2dist import monarch
    torch.manual_seed(0)
    layer = monarch.BlockDiagonalLinear(48, 64, nblocks=4, bias=True)
    x = torch.randn(3, 5, 48)
    ref = layer(x)
    out = block_diagonal_matmul(x, layer.weight, layer.bias)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(4096, 4, 192, 1536), (1000, 4, 768, 192), (513, 16, 48, 384)])
def test_gpu_bf16(shape, monkeypatch):
    monkeypatch.setenv("M2DIST_BLOCKDIAG", "triton")
    M, nb, p, q = shape
    _check(M, nb, p, q, torch.bfloat16, bias=True, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cublas", "auto"])
def test_gpu_backends(backend, monkeypatch):
    monkeypatch.setenv("M2DIST_BLOCKDIAG", backend)
    _check(2048, 4, 64, 128, torch.bfloat16, bias=True, device="cuda")
