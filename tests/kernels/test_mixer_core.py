"""The fused mixer core (four Triton passes around cuFFT, or around batched Toeplitz products up to
``DIRECT_MAX_LEN``) against the O(L^2) float64 definition, forward and every gradient; on CPU through the
interpreter, on the GPU machine with ``M2DIST_GPU_TESTS=1 ... -m gpu``."""
import pytest
import torch

from m2dist.kernels import accelerate, mixer_core, modules
from m2dist.kernels._triton import triton
from m2dist.kernels.mixer_core import fused_mixer_core
from m2dist.models.sequence_mixer import M2SequenceMixer
from tests.kernels._ref import naive_mixer_core, rel_err

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


@pytest.fixture(params=["fft", "direct"])
def route(request, monkeypatch):
    """Each long-convolution route at the tests' short lengths (the direct one takes them by default)."""
    monkeypatch.setattr(mixer_core, "DIRECT_MAX_LEN", 0 if request.param == "fft" else 10**9)
    return request.param


def _inputs(B, L, H, dtype, bidir, residual, masked, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0, dt=torch.float32):
        return (torch.randn(*shape, generator=g) * scale).to(device, dt).requires_grad_()

    z = leaf(B, L, 3 * H, dt=dtype)
    conv_w, conv_b = leaf(3 * H, 1, 3, scale=0.5), leaf(3 * H, scale=0.1)
    filt = (leaf(H, L, scale=L**-0.5), leaf(H, L, scale=L**-0.5) if bidir else None, leaf(H))
    u = res = None
    if residual:
        u = leaf(B, L, H)  # fp32, as under autocast (the layer input)
        res = (leaf(H, L, scale=L**-0.5), leaf(H, L, scale=L**-0.5) if bidir else None, leaf(H))
    keep = None
    if masked:
        keep = torch.ones(B, L)
        keep[0, L - L // 3:] = 0  # right padding on the first sequence
        keep = keep.to(device)
    return z, u, conv_w, conv_b, filt, res, keep


def _leaves(z, u, conv_w, conv_b, filt, res):
    return [t for t in (z, u, conv_w, conv_b, *filt, *(res or ())) if t is not None]


def _check(B, L, H, dtype, bidir, residual, masked, device="cpu"):
    z, u, conv_w, conv_b, filt, res, keep = _inputs(B, L, H, dtype, bidir, residual, masked, device)
    k2f, k2r, d2 = res if residual else (None, None, None)
    y = fused_mixer_core(z, u, conv_w, conv_b, *filt, k2f, k2r, d2, keep)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, y.dtype)
    (y.float() * gy.float()).sum().backward()

    leaves = _leaves(z, u, conv_w, conv_b, filt, res)
    ref = [t.detach().cpu().double().requires_grad_() for t in leaves]
    it = iter(ref)
    rz = next(it)
    ru = next(it) if residual else None
    rw, rb = next(it), next(it)
    rfilt = (next(it), next(it) if bidir else None, next(it))
    rres = (next(it), next(it) if bidir else None, next(it)) if residual else None
    yr = naive_mixer_core(rz, ru, rw, rb, rfilt, rres, None if keep is None else keep.cpu().double())
    (yr * gy.cpu().double()).sum().backward()

    tol = TOL[dtype]
    assert y.shape == (B, L, H) and y.dtype == dtype
    assert rel_err(y.cpu(), yr) < tol
    for a, r in zip(leaves, ref):
        assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape
        assert rel_err(a.grad.cpu(), r.grad) < tol, tuple(a.shape)


@pytest.mark.parametrize("bidir", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
def test_fused_mixer_matches_naive(bidir, residual, route):
    # H=20 is not a multiple of the interpreter's 16-channel tile; L=13 gives n=30, an odd half size (15: no
    # frequency pairs with itself); L=40 below gives an even one (n/4 does)
    _check(B=2, L=13, H=20, dtype=torch.float32, bidir=bidir, residual=residual, masked=False)


@pytest.mark.parametrize("L", [13, 40], ids=["odd_half", "even_half"])
def test_frequency_pairs_across_programs(monkeypatch, L):
    """The spectral passes with 2 frequency pairs per program, so that a row spans several programs and the pair
    index depends on the program id (at the interpreter's usual 64 pairs per program one program holds a row)."""
    real = mixer_core._pair_grid

    def tiny(S, H, n):
        (rows, _), _ = real(S, H, n)
        return (rows, triton.cdiv(n // 4 + 1, 2)), 2

    monkeypatch.setattr(mixer_core, "_pair_grid", tiny)
    monkeypatch.setattr(mixer_core, "DIRECT_MAX_LEN", 0)
    # One sequence of 8 channels: the pair indexing is per row, and the interpreter's time grows with the rows.
    _check(B=1, L=L, H=8, dtype=torch.float32, bidir=True, residual=True, masked=False)


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_fused_mixer_bf16_and_padding(masked, route):
    _check(B=2, L=40, H=8, dtype=torch.bfloat16, bidir=True, residual=True, masked=masked)


def test_mixer_module_takes_the_fused_path(monkeypatch):
    """Through M2SequenceMixer (argument order, mask, parameter grads): forced on in the interpreter vs off."""
    torch.manual_seed(0)
    mixer = M2SequenceMixer(12, 24, causal=False, filter_order=8)
    x = torch.randn(2, 24, 12)
    mask = torch.ones(2, 24)
    mask[1, 20:] = 0

    def run():
        mixer.zero_grad()
        y = mixer(x, mask)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in mixer.parameters()]

    y_ref, g_ref = run()
    calls = []
    real = fused_mixer_core

    def spy(*a):
        calls.append(1)
        return real(*a)

    accelerate(mixer)
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)
    monkeypatch.setattr("m2dist.kernels.mixer_core.fused_mixer_core", spy)
    y, g = run()
    assert calls, "the fused path was not taken"
    assert rel_err(y, y_ref) < 1e-5
    for a, r in zip(g, g_ref):
        assert rel_err(a, r) < 1e-5


def _spy_on_fused_mixer(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr("m2dist.kernels.mixer_core.fused_mixer_core", lambda *a: calls.append(1) or fused_mixer_core(*a))
    return calls


def test_fused_core_leaves_cpu_and_odd_short_convs_alone(monkeypatch):
    from m2dist.ops import mixer_core

    calls = _spy_on_fused_mixer(monkeypatch)
    core = modules.FusedMixerCore()
    z = torch.randn(1, 8, 6)
    filt = (torch.randn(2, 8), None, torch.randn(2))
    for conv_w, forced in ((torch.randn(6, 1, 3), False), (torch.randn(6, 1, 4), True)):
        monkeypatch.setattr(modules, "_on_gpu", lambda t: forced)
        conv_b = torch.randn(6)
        assert rel_err(core(z, None, conv_w, conv_b, filt), mixer_core(z, None, conv_w, conv_b, filt)) < 1e-6
    assert not calls, "the fused core ran on a CPU tensor or a 4-tap short conv"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bidir", [False, True], ids=["causal", "bidir"])
def test_fused_mixer_on_gpu(bidir):
    _check(B=2, L=1024, H=96, dtype=torch.bfloat16, bidir=bidir, residual=True, masked=False, device="cuda")
    _check(B=3, L=300, H=40, dtype=torch.float32, bidir=bidir, residual=True, masked=True, device="cuda")
    assert mixer_core._direct(8, 128, 64, 2)
    _check(B=8, L=128, H=64, dtype=torch.bfloat16, bidir=bidir, residual=True, masked=True, device="cuda")


def test_fused_mixer_takes_any_layout():
    """Inputs as callers may pass them: z a transposed view, u a channel slice of a wider tensor (tensor
    parallelism), a (1, L) mask broadcast over the batch, per-channel vectors with a stride."""
    g = torch.Generator().manual_seed(3)
    B, L, H = 2, 19, 5
    z = torch.randn(B, 3 * H, L, generator=g).transpose(1, 2).requires_grad_()
    u_full = torch.randn(B, L, 2 * H, generator=g).requires_grad_()
    conv_w = (torch.randn(3 * H, 1, 3, generator=g) * 0.5).requires_grad_()
    conv_b = torch.randn(3 * H, 2, generator=g)[:, 0].requires_grad_()
    d1 = torch.randn(H, 3, generator=g)[:, 1].requires_grad_()
    k1f, k1r, k2f, d2 = (torch.randn(H, L, generator=g) / L**0.5 for _ in range(4))
    d2 = d2[:, 0].clone()
    keep = torch.ones(1, L)
    keep[0, -4:] = 0
    y = fused_mixer_core(z, u_full[..., H:], conv_w, conv_b, k1f, k1r, d1, k2f, None, d2, keep)
    gy = torch.randn(y.shape, generator=g)
    (y * gy).sum().backward()
    leaves = (z, u_full, conv_w, conv_b, d1)
    ref = [t.detach().double().requires_grad_() for t in leaves]
    rz, ru, rw, rb, rd1 = ref
    yr = naive_mixer_core(rz, ru[..., H:], rw, rb, (k1f.double(), k1r.double(), rd1), (k2f.double(), None, d2.double()),
                          keep.double().expand(B, L))
    (yr * gy.double()).sum().backward()
    assert rel_err(y, yr) < 2e-5
    for a, r in zip(leaves, ref):
        assert rel_err(a.grad, r.grad) < 2e-5, tuple(a.shape)


def test_fused_modules_keep_float64_on_the_exact_path(monkeypatch):
    from m2dist.models.monarch_mlp import GeluGLU
    from m2dist.ops import mixer_core

    calls = _spy_on_fused_mixer(monkeypatch)
    glu_calls = []
    monkeypatch.setattr("m2dist.kernels.glu.gelu_glu", lambda g: glu_calls.append(1))
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)
    f64 = dict(dtype=torch.float64)
    z = torch.randn(1, 8, 6, **f64)
    filt = (torch.randn(2, 8, **f64), None, torch.randn(2, **f64))
    conv_w, conv_b = torch.randn(6, 1, 3, **f64), torch.randn(6, **f64)
    y = modules.FusedMixerCore()(z, None, conv_w, conv_b, filt)
    assert not calls and y.dtype == torch.float64
    assert rel_err(y, mixer_core(z, None, conv_w, conv_b, filt)) < 1e-6
    g = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(modules.FusedGeluGLU()(g), GeluGLU()(g)) and not glu_calls
