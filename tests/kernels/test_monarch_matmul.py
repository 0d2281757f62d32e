"""The permutation-fused order-2 Monarch matmul against the layer's dense matrix (``MonarchLinear.to_dense``, built
from explicit permutation matrices) in float64, through the Triton interpreter on CPU; on the GPU machine
(`M2DIST_GPU_TESTS=1 ... -m gpu`) in bf16 against the layer's einsum path in fp32."""
import pytest
import torch

from m2dist.kernels import KernelChoice, accelerate, modules
from m2dist.kernels import monarch_matmul as mm
from m2dist.monarch.monarch_linear import monarch_einsum
from m2dist.monarch import MonarchLinear
from tests.kernels._ref import rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# (in, out, nblocks): square, in < out (weight1 square p x p), in > out (weight2 square s x s); ragged sizes, so
# every tile edge is masked
SHAPES = [(64, 64, 4), (24, 80, 4), (84, 30, 3)]


def _weights(layer):
    """weight1, weight2[, bias]: monarch_matmul's argument order (parameters() lists the bias first)."""
    return [layer.weight1, layer.weight2] + ([layer.bias] if layer.bias is not None else [])


def _dense_reference(layer, x, gy):
    """Output and gradients (x, weight1, weight2[, bias]) of ``x @ to_dense().T + bias`` in float64."""
    layer = layer.double()
    xd = x.detach().double().requires_grad_()
    params = [xd, *_weights(layer)]
    y = xd @ layer.to_dense().T + (layer.bias if layer.bias is not None else 0)
    return y, torch.autograd.grad(y, params, gy.double())


def _check(shape, dtype, bias, lead=(2, 20)):
    # lead (2, 20): 40 rows, past the interpreter's 32-row threshold for split-K weight gradients
    n, m, nb = shape
    torch.manual_seed(n * 7 + m)
    layer = MonarchLinear(n, m, nb, bias=bias)
    x = torch.randn(*lead, n)
    gy = torch.randn(*lead, m)
    y_ref, grads_ref = _dense_reference(layer, x, gy)

    params = [t.detach().to(dtype).requires_grad_() for t in (x, *_weights(layer))]
    y = mm.monarch_matmul(*params, *([] if bias else [None]))
    y.backward(gy.to(dtype))
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < TOL[dtype]
    for p, g_ref in zip(params, grads_ref):
        assert rel_err(p.grad, g_ref) < TOL[dtype]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_dense_reference(shape, bias):
    _check(shape, torch.float32, bias)


def test_bf16_matches_dense_reference():
    _check(SHAPES[2], torch.bfloat16, bias=True)


def test_single_row_and_block():
    _check((12, 20, 1), torch.float32, bias=True, lead=(1,))


def test_converted_layer_runs_the_kernels(monkeypatch):
    """With the device check forced on, a converted bf16 MonarchLinear runs the kernel (and gives the einsum path's
    output); M2DIST_MONARCH=einsum leaves the layer as it is."""
    torch.manual_seed(0)
    layer = MonarchLinear(24, 80, 4)
    x = torch.randn(3, 5, 24)
    ref = layer(x)
    calls, real = [], mm.monarch_matmul

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(mm, "monarch_matmul", spy)
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)
    plain = MonarchLinear(24, 80, 4).to(torch.bfloat16)
    accelerate(plain, KernelChoice(monarch="einsum"))
    plain(x.to(torch.bfloat16))
    assert not calls, "M2DIST_MONARCH=einsum still ran the kernels"
    accelerate(layer, KernelChoice.from_env({"M2DIST_MONARCH": "kernel"}))
    out = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert len(calls) == 1
    assert rel_err(out, ref) < 1e-2


def test_auto_times_each_shape_once_and_keeps_the_faster(monkeypatch):
    """M2DIST_MONARCH=auto (the default): one timed step of each path per shape, then the cached choice."""
    timed = []
    fake_ms = {mm.monarch_matmul: 2.0, monarch_einsum: 1.0}  # einsum faster at the first shape

    def step_ms(fn, x, *rest):
        timed.append(fn)
        return fake_ms[fn] if x.shape[0] == 8 else 1 / fake_ms[fn]  # and slower at the second

    monkeypatch.setattr(mm, "_step_ms", step_ms)
    monkeypatch.setattr(mm, "_CHOICE", {})
    w1, w2 = torch.randn(4, 6, 6), torch.randn(4, 10, 6)
    assert not mm.kernels_win(torch.randn(8, 24), w1, w2)
    assert not mm.kernels_win(torch.randn(8, 24), w1, w2)
    assert len(timed) == 2
    assert mm.kernels_win(torch.randn(16, 24), w1, w2)
    assert len(timed) == 4


def test_kernel_declines_cpu_tensors(monkeypatch):
    monkeypatch.setattr(mm, "monarch_matmul", lambda *a: pytest.fail("the kernel ran on a CPU tensor"))
    layer = accelerate(MonarchLinear(24, 80, 4).to(torch.bfloat16), KernelChoice(monarch="kernel"))
    assert isinstance(layer.product, modules.MonarchKernel)
    x = torch.randn(3, 24, dtype=torch.bfloat16)
    assert torch.equal(layer(x), monarch_einsum(x, layer.weight1, layer.weight2, layer.bias))


def test_rejects_weights_that_do_not_chain():
    with pytest.raises(ValueError, match="do not chain"):
        mm.monarch_matmul(torch.randn(2, 16), torch.randn(4, 4, 4), torch.randn(4, 8, 3))


def _gpu_check(monkeypatch, shape, dtype=torch.bfloat16, rows=4000, tol=2e-2):
    """The converted layer under autocast (kernels, fp32 master weights) against its einsum path in fp32."""
    calls, real = [], mm.monarch_matmul
    monkeypatch.setattr(mm, "monarch_matmul", lambda *a: calls.append(1) or real(*a))
    n, m, nb = shape
    torch.manual_seed(0)
    layer = MonarchLinear(n, m, nb).cuda()
    x = torch.randn(2, rows // 2, n, device="cuda", requires_grad=True)
    gy = torch.randn(2, rows // 2, m, device="cuda")
    params = [x, *_weights(layer)]
    y_ref = layer(x)  # not converted: the einsum path, in fp32
    grads_ref = torch.autograd.grad(y_ref, params, gy)
    accelerate(layer, KernelChoice(monarch="kernel"))
    with torch.autocast("cuda", dtype=dtype):
        y = layer(x)
    grads = torch.autograd.grad(y, params, gy)
    assert calls, "the converted layer did not run the kernels"
    assert y.dtype == dtype
    assert rel_err(y, y_ref) < tol
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == torch.float32 and rel_err(g, g_ref) < tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(768, 3072, 4), (3072, 768, 4), (1024, 1024, 16), (96, 400, 4)])
def test_gpu_bf16_matches_einsum(shape, monkeypatch):
    _gpu_check(monkeypatch, shape)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_auto_choice_runs(monkeypatch):
    """The timed choice on a real GPU: either path, and the layer's output matches the einsum path's."""
    monkeypatch.setattr(mm, "_CHOICE", {})
    layer = accelerate(MonarchLinear(768, 3072, 4).cuda().to(torch.bfloat16), KernelChoice(monarch="auto"))
    x = torch.randn(4096, 768, device="cuda", dtype=torch.bfloat16)

    y = layer(x)
    assert len(mm._CHOICE) == 1
    assert rel_err(y.float(), monarch_einsum(x, layer.weight1, layer.weight2, layer.bias).float()) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "cublas", "auto"])
def test_gpu_backends_and_fp16(backend, monkeypatch):
    """The block-diagonal first factor on each backend; the permuted products always run on Triton."""
    monkeypatch.setenv("M2DIST_BLOCKDIAG", backend)
    _gpu_check(monkeypatch, (256, 512, 4), dtype=torch.float16, rows=2048)
