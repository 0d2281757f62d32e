"""The Monarch MLP with recomputed intermediates, against F.gelu(gate) * value and dense block-diagonal products in
float64; what each op's backward keeps; and the converter's switch."""
import pytest
import torch
import torch.nn.functional as F

from m2dist.kernels import KernelChoice, accelerate, modules
from m2dist.kernels.mlp_recompute import gelu_glu_block_diagonal, monarch_glu_mlp
from m2dist.models.monarch_mlp import MonarchGLU
from tests.kernels._ref import naive_block_diagonal, rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# The whole MLP chains three bf16 roundings (two products and the GLU) on the way to dh; the unfused kernels give the
# same bits (test_ops_give_the_unfused_kernels_bits), so this is bf16's error, not the recompute's.
MLP_TOL = {torch.float32: 1e-5, torch.bfloat16: 2.5e-2}


def _tensor(gen, shape, scale, dtype, device):
    return (torch.randn(*shape, generator=gen) * scale).to(device, dtype).requires_grad_()


def _glu(g):
    gate, value = g.chunk(2, dim=-1)
    return F.gelu(gate) * value


def _check(fn, reference, inputs, dtype, device, tol=TOL):
    y = fn(*inputs)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    (y.float() * dy.float()).sum().backward()
    ref = [t.detach().cpu().double().requires_grad_() for t in inputs]
    yr = reference(*ref)
    (yr * dy.cpu().double()).sum().backward()
    assert y.dtype == dtype and y.shape == yr.shape
    assert rel_err(y.cpu(), yr) < tol[dtype]
    for t, r in zip(inputs, ref):
        assert t.grad.dtype == dtype and rel_err(t.grad.cpu(), r.grad) < tol[dtype]


def _glu_bd_inputs(M, nb, p, q, dtype, device="cpu"):
    gen = torch.Generator().manual_seed(M + nb)
    return [_tensor(gen, (M, 2 * nb * p), 2, dtype, device), _tensor(gen, (nb, q, p), p**-0.5, dtype, device),
            _tensor(gen, (nb * q,), 1, dtype, device)]


def _mlp_inputs(M, nb, H, I, dtype, device="cpu"):
    gen = torch.Generator().manual_seed(M + nb)
    return [_tensor(gen, (M, H), 1, dtype, device),
            _tensor(gen, (nb, 2 * I // nb, H // nb), (H // nb)**-0.5, dtype, device),
            _tensor(gen, (nb, H // nb, I // nb), (I // nb)**-0.5, dtype, device), _tensor(gen, (H,), 1, dtype, device)]


def _mlp_reference(h, w1, w2, b2):
    return naive_block_diagonal(_glu(naive_block_diagonal(h, w1)), w2, b2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_glu_block_diagonal_matches_reference(dtype):
    # I = nb * p = 40: not a multiple of the GLU's tile; M=40 takes the split-K weight-gradient path
    _check(gelu_glu_block_diagonal, lambda g, w, b: naive_block_diagonal(_glu(g), w, b),
           _glu_bd_inputs(M=40, nb=2, p=20, q=24, dtype=dtype), dtype, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_whole_mlp_matches_reference(dtype):
    _check(monarch_glu_mlp, _mlp_reference, _mlp_inputs(M=40, nb=2, H=24, I=40, dtype=dtype), dtype, "cpu",
           MLP_TOL)


def _grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    y.backward(torch.ones_like(y))
    return [y.detach()] + [t.grad for t in leaves]


def test_ops_give_the_unfused_kernels_bits():
    from m2dist.kernels.block_diagonal import block_diagonal_matmul
    from m2dist.kernels.glu import gelu_glu

    inputs = _mlp_inputs(M=40, nb=2, H=24, I=40, dtype=torch.bfloat16)
    unfused = _grads(lambda h, w1, w2, b2: block_diagonal_matmul(gelu_glu(block_diagonal_matmul(h, w1)), w2, b2),
                     inputs)
    for got, want in zip(_grads(monarch_glu_mlp, inputs), unfused):
        assert torch.equal(got, want)
    g, w2, b2 = _glu_bd_inputs(M=40, nb=2, p=20, q=24, dtype=torch.bfloat16)
    for got, want in zip(_grads(gelu_glu_block_diagonal, [g, w2, b2]),
                         _grads(lambda g, w, b: block_diagonal_matmul(gelu_glu(g), w, b), [g, w2, b2])):
        assert torch.equal(got, want)


def _saved_shapes(fn):
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sorted(shapes)


def test_backward_keeps_only_the_inputs():
    from m2dist.kernels.block_diagonal import block_diagonal_matmul
    from m2dist.kernels.glu import gelu_glu

    h, w1, w2, b2 = _mlp_inputs(M=16, nb=2, H=8, I=16, dtype=torch.float32)
    unfused = _saved_shapes(lambda: block_diagonal_matmul(gelu_glu(block_diagonal_matmul(h, w1)), w2, b2))
    assert (16, 32) in unfused and (16, 16) in unfused  # g (M, 2I) and a (M, I): what the recompute removes
    g = torch.randn(16, 32)
    assert _saved_shapes(lambda: gelu_glu_block_diagonal(g, w2, b2)) == sorted([(16, 32), tuple(w2.shape), (8,)])
    assert _saved_shapes(lambda: monarch_glu_mlp(h, w1, w2, b2)) == sorted([(16, 8), tuple(w1.shape),
                                                                            tuple(w2.shape), (8,)])


def test_shapes_that_do_not_chain_are_refused():
    with pytest.raises(ValueError, match="not 2 x 2 x 8"):
        gelu_glu_block_diagonal(torch.randn(4, 30), torch.randn(2, 12, 8))
    with pytest.raises(ValueError, match="do not chain"):
        monarch_glu_mlp(torch.randn(4, 8), torch.randn(2, 8, 4), torch.randn(2, 4, 3))


def test_choice_from_the_environment():
    assert KernelChoice.from_env({}).mlp_recompute == "none"
    assert KernelChoice.from_env({"M2DIST_MLP_RECOMPUTE": "mlp"}).mlp_recompute == "mlp"
    with pytest.raises(ValueError, match="M2DIST_MLP_RECOMPUTE must be one of"):
        KernelChoice.from_env({"M2DIST_MLP_RECOMPUTE": "all"})
    assert type(accelerate(MonarchGLU(16, 32), KernelChoice())) is MonarchGLU  # off by default


@pytest.mark.parametrize("recompute,op", [("glu", "gelu_glu_block_diagonal"), ("mlp", "monarch_glu_mlp")])
def test_converted_mlp_takes_its_op_and_gives_the_default_kernels_bits(monkeypatch, recompute, op):
    torch.manual_seed(0)
    plain = MonarchGLU(16, 32, nblocks=4).to(torch.bfloat16)
    mlp = MonarchGLU(16, 32, nblocks=4).to(torch.bfloat16)
    mlp.load_state_dict(plain.state_dict())
    accelerate(plain, KernelChoice())  # the default kernels: block-diagonal products and the fused GLU
    accelerate(mlp, KernelChoice(mlp_recompute=recompute))
    assert type(mlp) is modules.RecomputingMonarchGLU and mlp.recompute == recompute
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)  # run the kernels through the interpreter
    from m2dist.kernels import mlp_recompute

    calls, real = [], getattr(mlp_recompute, op)
    monkeypatch.setattr(mlp_recompute, op, lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    y, y_plain = mlp(x), plain(x)
    assert calls and torch.equal(y, y_plain)
    y.float().square().sum().backward()
    y_plain.float().square().sum().backward()
    for (name, p), p_plain in zip(mlp.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, p_plain.grad), name
    mlp.train().dropout.p = 0.1  # active dropout: the reference path, not the op
    calls.clear()
    mlp(x)
    assert not calls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_gpu():
    _check(gelu_glu_block_diagonal, lambda g, w, b: naive_block_diagonal(_glu(g), w, b),
           _glu_bd_inputs(M=4096, nb=4, p=768, q=256, dtype=torch.bfloat16, device="cuda"), torch.bfloat16, "cuda")
    _check(monarch_glu_mlp, _mlp_reference, _mlp_inputs(M=4096, nb=4, H=1024, I=4096, dtype=torch.bfloat16,
                                                        device="cuda"), torch.bfloat16, "cuda", MLP_TOL)
    # (no fp32 case: the module takes these ops only in bf16/fp16, and Triton's fp32 dots run in tf32)
