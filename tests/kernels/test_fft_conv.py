import pytest
import torch

from m2dist.kernels import modules
from m2dist.kernels.fft_conv import fft_long_conv, fft_size
from m2dist.kernels.monarch_fft_conv import factors, monarch_long_conv, supports
from tests.kernels._ref import naive_long_conv, rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _inputs(B, H, L, dtype, bidir, skip, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed + L)
    u = torch.randn(B, H, L, generator=g).to(device, dtype).requires_grad_()
    kf = (torch.randn(H, L, generator=g) / L**0.5).to(device).requires_grad_()
    kr = (torch.randn(H, L, generator=g) / L**0.5).to(device).requires_grad_() if bidir else None
    d = torch.randn(H, generator=g).to(device).requires_grad_() if skip else None
    return u, kf, kr, d


def _check(B, H, L, dtype, bidir, skip, device="cpu", conv=fft_long_conv):
    u, kf, kr, d = _inputs(B, H, L, dtype, bidir, skip, device)
    y = conv(u, kf, kr, d)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    (y.float() * gy.float()).sum().backward()

    leaves = [t for t in (u, kf, kr, d) if t is not None]
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]
    it = iter(ref_leaves)
    ru, rkf = next(it), next(it)
    rkr = next(it) if bidir else None
    rd = next(it) if skip else None
    yr = naive_long_conv(ru, rkf, rkr, rd)
    (yr * gy.cpu().double()).sum().backward()
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == u.shape
    assert rel_err(y.cpu(), yr) < tol
    for a, r in zip(leaves, ref_leaves):
        assert a.grad.dtype == a.dtype
        assert rel_err(a.grad.cpu(), r.grad) < tol, a.shape


@pytest.mark.parametrize("bidir", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("skip", [False, True], ids=["noskip", "skip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_naive(bidir, skip, dtype):
    _check(B=2, H=3, L=13, dtype=dtype, bidir=bidir, skip=skip)  # L=13: n=27, an odd FFT size


@pytest.mark.parametrize("bidir", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_monarch_matches_naive(bidir, dtype):
    # L=256: N = 512 = 32 x 16, the smallest size the kernel takes (both dot operands >= 16)
    _check(B=2, H=3, L=256, dtype=dtype, bidir=bidir, skip=True, conv=monarch_long_conv)


def test_monarch_sizes():
    assert factors(512) == (32, 16) and factors(4096) == (64, 64) and factors(2048) == (64, 32)
    assert supports(256) and supports(2048) and not supports(128) and not supports(1000) and not supports(4096)


def test_fft_size_is_smooth_and_long_enough():
    for L in (1, 7, 13, 100, 1000, 2048, 1009):
        n = fft_size(L)
        assert n >= 2 * L and n % 2 == 0
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1


def test_kernel_modules_stay_off_cpu(monkeypatch):
    """On CPU tensors (no interpreter forced) the kernel-backed long conv and block-diagonal product run the
    reference and never call a kernel."""
    from m2dist import ops
    from m2dist.monarch.blockdiag import block_diagonal

    def fail(*a):
        raise AssertionError("a kernel ran on a CPU tensor")

    monkeypatch.setattr("m2dist.kernels.fft_conv.fft_long_conv", fail)
    monkeypatch.setattr("m2dist.kernels.block_diagonal.block_diagonal_matmul", fail)
    u, k = torch.randn(1, 2, 8), torch.randn(2, 8)
    assert torch.equal(modules.kernel_long_conv(u, k), ops.long_conv(u, k))
    x, w = torch.randn(3, 8, dtype=torch.bfloat16), torch.randn(2, 4, 4, dtype=torch.bfloat16)
    assert torch.equal(modules.BlockDiagonalKernel()(x, w), block_diagonal(x, w))


def test_matches_project_long_conv():
    from m2dist import ops
    u, kf, kr, d = _inputs(2, 3, 16, torch.float32, True, True)
    assert rel_err(fft_long_conv(u, kf, kr, d), ops.long_conv(u, kf, kr, d)) < 1e-5
    u, kf, _, d = _inputs(2, 3, 16, torch.float32, False, True)
    assert rel_err(fft_long_conv(u, kf, None, d), ops.long_conv(u, kf, None, d)) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("L", [256, 1000])
@pytest.mark.parametrize("bidir", [False, True], ids=["causal", "bidir"])
def test_gpu_bf16(L, bidir):
    _check(B=3, H=8, L=L, dtype=torch.bfloat16, bidir=bidir, skip=True, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("L", [256, 1024, 2048])
@pytest.mark.parametrize("bidir", [False, True], ids=["causal", "bidir"])
def test_gpu_monarch_bf16(L, bidir):
    _check(B=3, H=8, L=L, dtype=torch.bfloat16, bidir=bidir, skip=True, device="cuda", conv=monarch_long_conv)
