"""The MLP's second half with the GLU recomputed in the backward, against F.gelu(gate) * value and a dense
block-diagonal product in float64; and what its backward keeps."""
import pytest
import torch
import torch.nn.functional as F

from m2dist.kernels import KernelChoice, accelerate, modules
from m2dist.kernels.glu_block_diagonal import gelu_glu_block_diagonal
from m2dist.models.monarch_mlp import MonarchGLU
from tests.kernels._ref import naive_block_diagonal, rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _inputs(M, nb, p, q, dtype, device="cpu"):
    gen = torch.Generator().manual_seed(M + nb)
    g = (torch.randn(M, 2 * nb * p, generator=gen) * 2).to(device, dtype).requires_grad_()
    w = (torch.randn(nb, q, p, generator=gen) / p**0.5).to(device, dtype).requires_grad_()
    b = torch.randn(nb * q, generator=gen).to(device, dtype).requires_grad_()
    return g, w, b


def _reference(g, w, b):
    gate, value = g.chunk(2, dim=-1)
    return naive_block_diagonal(F.gelu(gate) * value, w, b)


def _check(M, nb, p, q, dtype, device="cpu"):
    g, w, b = _inputs(M, nb, p, q, dtype, device)
    y = gelu_glu_block_diagonal(g, w, b)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    (y.float() * dy.float()).sum().backward()
    ref = [t.detach().cpu().double().requires_grad_() for t in (g, w, b)]
    yr = _reference(*ref)
    (yr * dy.cpu().double()).sum().backward()
    assert y.dtype == dtype and y.shape == yr.shape
    assert rel_err(y.cpu(), yr) < TOL[dtype]
    for t, r in zip((g, w, b), ref):
        assert t.grad.dtype == dtype and rel_err(t.grad.cpu(), r.grad) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(dtype):
    # I = nb * p = 40: not a multiple of the GLU's tile; M=40 takes the split-K weight-gradient path
    _check(M=40, nb=2, p=20, q=24, dtype=dtype)


def _saved_shapes(fn, *args):
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return shapes


def test_backward_keeps_g_and_not_the_glu_output():
    from m2dist.kernels.block_diagonal import block_diagonal_matmul
    from m2dist.kernels.glu import gelu_glu

    g, w, b = _inputs(M=16, nb=2, p=8, q=12, dtype=torch.float32)
    a_shape = (16, 16)  # (M, I)
    unfused = _saved_shapes(lambda: block_diagonal_matmul(gelu_glu(g), w, b))
    assert a_shape in unfused  # what the recompute removes
    fused = _saved_shapes(lambda: gelu_glu_block_diagonal(g, w, b))
    assert sorted(fused) == sorted([tuple(g.shape), tuple(w.shape), tuple(b.shape)])


def test_rejects_a_mismatched_width():
    with pytest.raises(ValueError, match="not 2 x 2 x 8"):
        gelu_glu_block_diagonal(torch.randn(4, 30), torch.randn(2, 12, 8))


def test_converter_swaps_the_mlp_only_when_asked(monkeypatch):
    torch.manual_seed(0)
    ref = MonarchGLU(16, 32, nblocks=4).to(torch.bfloat16)
    mlp = MonarchGLU(16, 32, nblocks=4).to(torch.bfloat16)
    mlp.load_state_dict(ref.state_dict())
    assert type(accelerate(MonarchGLU(16, 32), KernelChoice())) is MonarchGLU  # off by default
    assert not KernelChoice.from_env({}).glu_recompute and KernelChoice.from_env({"M2DIST_GLU_RECOMPUTE": "1"}).glu_recompute
    accelerate(mlp, KernelChoice(glu_recompute=True))
    assert type(mlp) is modules.RecomputingMonarchGLU
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)  # run the kernels through the interpreter
    calls = []
    from m2dist.kernels import glu_block_diagonal

    real = glu_block_diagonal.gelu_glu_block_diagonal
    monkeypatch.setattr(glu_block_diagonal, "gelu_glu_block_diagonal", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    y, y_ref = mlp(x), ref(x)
    assert calls and rel_err(y.float(), y_ref.float()) < 1e-2
    y.float().sum().backward()
    y_ref.float().sum().backward()
    for (name, p), p_ref in zip(mlp.named_parameters(), ref.parameters()):
        assert rel_err(p.grad.float(), p_ref.grad.float()) < 2e-2, name
    mlp.train().dropout.p = 0.1  # active dropout: the reference path, not the op
    calls.clear()
    mlp(x)
    assert not calls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_gpu():
    _check(M=4096, nb=4, p=768, q=256, dtype=torch.bfloat16, device="cuda")
    _check(M=1000, nb=2, p=50, q=24, dtype=torch.float32, device="cuda")
