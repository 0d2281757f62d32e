"""Per-layer training options applied to a built model: activation checkpointing, ``torch.compile`` and CUDA
graphs."""

from __future__ import annotations

from typing import Optional

from torch import nn

from m2dist.config.schema import Config


def layer_list(model: nn.Module, num_layers: int) -> Optional[nn.ModuleList]:
    """The model's stack of residual layers (``blocks`` or ``layers``), found structurally so that any model of
    m2dist.models (or one rewritten by tensor parallelism) works."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    return None


def _checkpoint_forward(layer: nn.Module) -> None:
    """Recompute ``layer``'s activations in the backward pass. The forward is wrapped in place rather than the
    module wrapped (torch's checkpoint_wrapper), so parameter names -- and checkpoints -- do not depend on the option.
    Non-reentrant: works with ZeRO-3's parameter hooks and with inputs that do not require grad."""
    from torch.utils.checkpoint import checkpoint

    inner = layer.forward

    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    layer.forward = forward


def cuda_graphs_on(cfg: Config) -> bool:
    """``trainer.cuda_graphs`` resolved: ``auto`` is on for an M2 model when a CUDA device trains and nothing
    clashes. M2 only: its layers are chains of short kernels, and graphs took M2-BERT-80M at L=128 from 164K to 292K
    tokens/s; a Transformer layer is a few large kernels, GPT-360M at L=2048 ran at the same speed either way
    (benchmarks/NOTES.md, attempt 21), and a graph's private memory pool would only cost it memory."""
    if cfg.trainer.cuda_graphs != "auto":
        return bool(cfg.trainer.cuda_graphs)
    import torch

    from m2dist.config.validate import graph_clashes

    return cfg.model.arch.startswith("m2_") and torch.cuda.is_available() and not graph_clashes(cfg)


def apply_layer_options(model: nn.Module, cfg: Config) -> nn.Module:
    layers = layer_list(model, cfg.model.num_layers)
    t = cfg.trainer
    graphs = cuda_graphs_on(cfg) and (layers is not None or t.cuda_graphs is True)
    if (t.activation_checkpointing or t.compile or graphs) and layers is None:
        raise ValueError("activation checkpointing / compile / CUDA graphs need the model's layer list, which was "
                         "not found")
    if t.activation_checkpointing:
        for layer in layers:
            _checkpoint_forward(layer)
    if t.compile:
        # Per layer, as torchtitan does: the layers are identical, so one compiled graph is reused L times and a
        # graph break stays local to a layer.
        for layer in layers:
            layer.compile()
    if graphs:
        import torch

        # trainer.device=cpu is refused at load (m2dist.config.validate); cuda_graphs=true with trainer.device=auto
        # on a machine without CUDA is here ("auto" resolves off there).
        if not torch.cuda.is_available():
            raise ValueError(f"trainer.cuda_graphs=true needs a CUDA device (trainer.device={t.device!r}, none "
                             f"available); set trainer.cuda_graphs=false")
        from m2dist.train.layer_graphs import LayerGraphs

        LayerGraphs(layers)
    return model
