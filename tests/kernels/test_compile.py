"""torch.compile over the fused ops (custom ops with autograd): the fake (meta) implementations must give the shapes
the real ones produce, and the compiled graph must match eager. On CPU this compiles with inductor around the
interpreted kernels, so it checks the registrations, not GPU speed."""
import pytest
import torch

from m2dist.kernels import accelerate, modules
from m2dist.kernels.block_diagonal import block_diagonal_matmul
from m2dist.models.blocks import M2BertLayer
from m2dist.models.monarch_mlp import MonarchGLU
from m2dist.models.sequence_mixer import M2SequenceMixer
from tests.kernels._ref import rel_err


@pytest.fixture(autouse=True)
def _no_compile_caches():
    """Inductor's on-disk caches key a graph on its ops, not on a custom op's fake implementation: after a change of
    what an op returns (as when the mixer's saved spectrum changed shape) a stale entry fails these tests."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        yield


def _loss_and_grads(fn, params, *inputs):
    for p in params:
        p.grad = None
    out = fn(*inputs)
    # A fixed random projection: the layer ends in a LayerNorm, whose output's square sum is constant.
    loss = (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def test_compiled_m2_layer_matches_eager(monkeypatch):
    monkeypatch.setattr(modules, "_on_gpu", lambda t: True)  # take the fused mixer core and GLU on CPU
    torch.manual_seed(0)
    layer = accelerate(M2BertLayer(M2SequenceMixer(16, 24, causal=False, filter_order=8),
                                   MonarchGLU(16, 32, nblocks=4), 16, 1e-12))
    x = torch.randn(2, 24, 16, requires_grad=True)
    params = [x, *layer.parameters()]
    eager = _loss_and_grads(layer, params, x)
    torch._dynamo.reset()
    compiled = _loss_and_grads(torch.compile(layer, fullgraph=True), params, x)
    assert rel_err(compiled[0], eager[0]) < 1e-6
    for a, r in zip(compiled[1], eager[1]):
        assert rel_err(a, r) < 1e-5


def test_compiled_block_diagonal_matches_eager():
    torch.manual_seed(0)
    x = torch.randn(20, 32, requires_grad=True)
    w = torch.randn(4, 12, 8, requires_grad=True)
    b = torch.randn(48, requires_grad=True)
    eager = _loss_and_grads(block_diagonal_matmul, [x, w, b], x, w, b)
    torch._dynamo.reset()
    compiled = _loss_and_grads(torch.compile(block_diagonal_matmul, fullgraph=True), [x, w, b], x, w, b)
    assert rel_err(compiled[0], eager[0]) < 1e-6
    for a, r in zip(compiled[1], eager[1]):
        assert rel_err(a, r) < 1e-5


def test_compiled_monarch_matches_eager():
    from m2dist.kernels.monarch_matmul import monarch_matmul

    torch.manual_seed(0)
    x = torch.randn(2, 10, 24, requires_grad=True)
    w1 = torch.randn(4, 6, 6, requires_grad=True)
    w2 = torch.randn(4, 20, 6, requires_grad=True)
    b = torch.randn(80, requires_grad=True)
    eager = _loss_and_grads(monarch_matmul, [x, w1, w2, b], x, w1, w2, b)
    torch._dynamo.reset()
    compiled = _loss_and_grads(torch.compile(monarch_matmul, fullgraph=True), [x, w1, w2, b], x, w1, w2, b)
    assert rel_err(compiled[0], eager[0]) < 1e-6
    for a, r in zip(compiled[1], eager[1]):
        assert rel_err(a, r) < 1e-5
