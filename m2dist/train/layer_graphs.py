"""CUDA graphs of the residual layers (``trainer.cuda_graphs``): each layer's forward and backward replayed as one
graph each instead of launched kernel by kernel.

Why: an M2 layer is a chain of short memory-bound passes (filter MLP, mixer core, FFTs, GLU, norms), so at L=2048 a
40-layer step launches thousands of kernels and the GPU waits on the host: the trainer's M2-GPT step took ~80 ms
more wall time than GPU time (benchmarks/NOTES.md, attempts 15-16), and any host work the engine adds shows up in
the step time. A replayed graph is one launch per layer and direction.

The method is ``torch.cuda.make_graphed_callables``', with three differences:

* captured lazily, at the second training forward in a row that sees the same input: the first runs eager, so cuBLAS
  workspaces, cuFFT plans and Triton autotuning exist before the capture, and the capture sees the parameters where
  DeepSpeed's flat buffers and a restored checkpoint put them;
* every layer is captured in one pass, the forwards in order and then the backwards in reverse, into one shared
  memory pool: the order they replay in training, which is what makes sharing the pool safe;
* parameter gradients come out as copies: a graph's output buffers are rewritten by every replay, and AccumulateGrad
  would keep the buffer itself as ``.grad``, so with gradient accumulation the next micro-batch would overwrite the
  gradient it then adds to.

A layer runs eager whenever its input differs from the captured one (shape, dtype, mask, autocast), in eval, under
``no_grad`` and on CPU. What a graph cannot follow -- host syncs inside a layer, parameters that move, collectives
over gloo, ZeRO-3's gathered parameters, recomputation, ``torch.compile`` -- is refused by the config
(``m2dist.config.validate``) or, for moved parameters, triggers a new capture.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

# Eager passes over every layer on the capture stream before capturing (``_pass``).
WARMUP_PASSES = 1


def _key(x: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple:
    autocast = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    return (tuple(x.shape), x.dtype, x.requires_grad, x.device,
            None if mask is None else (tuple(mask.shape), mask.dtype), autocast)


class _LayerGraph:
    """One layer's two graphs and the static tensors they read and write."""

    def __init__(self, layer: nn.Module, eager, mask: Optional[torch.Tensor]):
        self.layer, self.eager = layer, eager
        self.names = [name for name, p in layer.named_parameters() if p.requires_grad]
        self.params = [layer.get_parameter(name) for name in self.names]
        self.aliases: list[torch.Tensor] = []
        self.static_in: Optional[torch.Tensor] = None
        self.static_mask = mask
        self.fwd, self.bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        self.out = self.grad_out = None
        self.grad_in: Optional[torch.Tensor] = None
        self.grad_params: list[Optional[torch.Tensor]] = []

    def targets(self) -> tuple:
        return ((self.static_in,) if self.static_in.requires_grad else ()) + tuple(self.aliases)

    @contextlib.contextmanager
    def on_aliases(self):
        """The layer runs on fresh leaves that share the parameters' storage (so a replay reads the current
        weights). Why not the parameters themselves: their AccumulateGrad nodes outlive a step (the last loss still
        holds the graph; ZeRO keeps them for its hooks) and remember the stream they were made on, the default one,
        and a backward captured on another stream that ends in them makes the default stream wait on the capture,
        which invalidates it (pytorch/pytorch#164302)."""
        self.aliases = [p.detach().requires_grad_() for p in self.params]
        slots = []
        for name, alias in zip(self.names, self.aliases):
            owner, _, attr = name.rpartition(".")
            module = self.layer.get_submodule(owner)
            slots.append((module, attr, module._parameters[attr]))
            module._parameters[attr] = alias
        try:
            yield
        finally:
            for module, attr, param in slots:
                module._parameters[attr] = param


def _pass(graphs: list[_LayerGraph], static_in: torch.Tensor, autocast, stream, pool) -> None:
    """One forward through every layer, then one backward in reverse, each layer reading its neighbours' buffers as
    the replays do. With ``pool`` every layer's two steps are captured into its graphs; without (the warm-up) the
    same calls run eagerly on the same stream, so whatever the capture then calls -- a backend timed once per tensor
    layout, an autotuned kernel, a stream's cuBLAS workspace -- has run before with exactly those layouts."""
    def recording(graph):
        if pool is None:
            return contextlib.nullcontext()
        return torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local")

    step = "forward"
    try:
        with torch.cuda.stream(stream):
            inp = static_in
            for i, g in enumerate(graphs):
                g.static_in = inp
                with recording(g.fwd), autocast(), g.on_aliases():
                    g.out = g.eager(inp, g.static_mask)
                inp = g.out.detach().requires_grad_(static_in.requires_grad)  # the next layer reads this buffer
            step = "backward"
            for i in reversed(range(len(graphs))):
                g, nxt = graphs[i], graphs[i + 1] if i + 1 < len(graphs) else None
                # This layer's output gradient is the next layer's input gradient, already in that buffer.
                g.grad_out = nxt.grad_in if nxt is not None and nxt.grad_in is not None else torch.ones_like(g.out)
                with recording(g.bwd):
                    grads = torch.autograd.grad(g.out, g.targets(), g.grad_out, allow_unused=True)
                if g.static_in.requires_grad:
                    g.grad_in, grads = grads[0], grads[1:]
                g.grad_params = list(grads)
                g.out = g.out.detach()  # frees the autograd graph of this pass (its saved tensors)
    except Exception as exc:
        what = "capturing" if pool is not None else "warming up"
        raise RuntimeError(f"trainer.cuda_graphs: {what} the {step} of layer {i} failed ({type(exc).__name__}: "
                           f"{exc}); run with trainer.cuda_graphs=false") from exc


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graph: _LayerGraph, x: torch.Tensor, mask: Optional[torch.Tensor], *params: torch.Tensor):
        ctx.graph = graph
        if x.data_ptr() != graph.static_in.data_ptr():  # layer i+1 reads layer i's output buffer in place
            graph.static_in.copy_(x)
        if mask is not None and mask.data_ptr() != graph.static_mask.data_ptr():
            graph.static_mask.copy_(mask)
        graph.fwd.replay()
        return graph.out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        graph = ctx.graph
        if grad.data_ptr() != graph.grad_out.data_ptr():
            graph.grad_out.copy_(grad)
        graph.bwd.replay()
        grad_x = None if graph.grad_in is None else graph.grad_in.detach()
        grads = tuple(None if g is None else g.clone() for g in graph.grad_params)
        return (None, grad_x, None, *grads)


class LayerGraphs:
    """Installs itself as the ``forward`` of each layer of ``layers`` (an instance attribute, so parameter names and
    checkpoints do not change). Layer 0 decides, per forward, whether the whole stack replays or runs eager."""

    def __init__(self, layers: nn.ModuleList):
        self.layers = list(layers)
        self.eager = [layer.forward for layer in self.layers]
        self.graphs: list[_LayerGraph] = []
        self.seen = self.captured = None
        self.params: list[torch.Tensor] = []  # every graphed layer's parameters, and where they were at capture
        self.pointers: list[int] = []
        self.replaying = False
        for i, layer in enumerate(self.layers):
            layer.forward = self._forward_of(i)

    def _forward_of(self, i: int):
        def forward(x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
            if i == 0:
                self.replaying = self._decide(x, attention_mask)
            if not self.replaying:
                return self.eager[i](x, attention_mask)
            graph = self.graphs[i]
            return _Replay.apply(graph, x, attention_mask, *graph.params)
        return forward

    def _decide(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
        if not (x.is_cuda and torch.is_grad_enabled() and self.layers[0].training):
            return False
        key = _key(x, mask)
        last, self.seen = self.seen, key
        if key == self.captured and [p.data_ptr() for p in self.params] == self.pointers:
            return True
        # A new input is captured when two training forwards in a row see it (the first runs eager, and the
        # kernels get warm): an odd batch in between -- an unpadded one among padded ones, whose mask the trainer
        # drops -- runs eager without costing a capture.
        if key != last:
            return False
        self._capture(x, mask)
        self.captured = key
        return True

    def _capture(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        self.graphs = []  # the old graphs (another input shape) and their pool go
        enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

        def autocast():  # the caller's autocast, without the weight-cast cache a graph cannot keep
            return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        static_in = x.detach().clone().requires_grad_(x.requires_grad)
        static_mask = None if mask is None else mask.clone()
        graphs = [_LayerGraph(layer, eager, static_mask) for layer, eager in zip(self.layers, self.eager)]
        for _ in range(WARMUP_PASSES):
            _pass(graphs, static_in, autocast, stream, pool=None)
        _pass(graphs, static_in, autocast, stream, pool=torch.cuda.graph_pool_handle())
        torch.cuda.current_stream().wait_stream(stream)
        self.graphs = graphs
        self.params = [p for g in graphs for p in g.params]
        self.pointers = [p.data_ptr() for p in self.params]
