"""What a training step keeps for the backward, per layer and per op, on the GPU path -- computed on a CPU.

The model of a ``train_bench.py`` row (same config, same converter and layer options) runs one forward and its loss
on fake CUDA tensors (``torch._subclasses.FakeTensorMode``: shapes and dtypes, no data, no GPU), under bf16 autocast,
with ``accelerate``'s kernel-backed modules taking their GPU branches (their ops' fake implementations give the
outputs). Every tensor autograd saves is recorded with the module that saved it; tensors sharing storage count once,
and parameters (not activations) are left out -- but not their bf16 copies under autocast, which a step holds too
(a few MiB a layer). So the table is the activation memory at the end of the forward --
what a step holds when its backward starts -- at the row's tokens per step, without running the kernels. The
measured peak is higher by the backward's transients (first of all the loss's gradient over the vocabulary).

What it does not see: the allocator's fragmentation and caches, the backward's transients (each layer's gradients
while it runs), workspace of cuBLAS/cuFFT, and the optimizer (added as 16 bytes per parameter: fp32 weight, gradient
and AdamW's two moments; ZeRO-1's partitioned fp32 copy adds 4 more, shown separately). Attention is modelled as
flash attention keeps it (q, k, v, output, fp32 log-sum-exp), which SDPA runs on the GPU; on fake tensors SDPA
would take its math path and keep the (L, L) scores.

    python3 benchmarks/activation_memory.py                          # the issue's rows
    ROWS=m2-gpt-360m@2048 DETAIL=1 python3 benchmarks/activation_memory.py   # every saved tensor of one layer
    M2DIST_MLP_RECOMPUTE=mlp ROWS=m2-gpt-360m@2048 python3 benchmarks/activation_memory.py   # with a converter option
"""
from __future__ import annotations

import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_ROWS = "m2-gpt-360m@2048,gpt-360m@2048,m2-gpt-360m@16384,gpt-360m@16384,m2-bert-80m@128,bert-base@128"
GIB = 1 << 30
OPTIMIZER_BYTES_PER_PARAM = 16  # fp32 weight + gradient + two AdamW moments
ZERO1_EXTRA_BYTES_PER_PARAM = 4  # DeepSpeed ZeRO-1's fp32 partition (the whole model on one rank)


class _FlashLikeAttention:
    """``F.scaled_dot_product_attention`` keeping what flash attention keeps for its backward."""

    @staticmethod
    def apply(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
        import torch

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                out = torch.empty_like(q)
                lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
                ctx.save_for_backward(q, k, v, out, lse)
                return out

            @staticmethod
            def backward(ctx, grad):  # never run: the measurement stops after the forward
                raise NotImplementedError

        if attn_mask is not None:
            raise SystemExit("activation_memory: a padding mask takes SDPA off flash attention; rows run packed")
        return Fn.apply(q, k, v)


def layer_of(path: str) -> str:
    """'blocks.7.mlp.out_proj' -> 'blocks.*' (one layer stands for all); embeddings and heads keep their name."""
    m = re.match(r"^(.*?\.?\d+)\.", path + ".")
    return re.sub(r"\d+", "*", m.group(1)) if m else path


def measure(preset: str, length: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch._subclasses.fake_tensor import FakeTensorMode

    from m2dist.data.contract import IGNORE_INDEX, task_of
    from m2dist.kernels import accelerate
    from m2dist.models import build_model
    from m2dist.train.layer_options import apply_layer_options
    from m2dist.train.tasks import training_loss_sum
    from train_bench import row_config

    cfg = row_config(preset, length, "unused", "unused", "unused", [])
    batch = cfg.trainer.micro_batch_size
    model = apply_layer_options(accelerate(build_model(cfg.model)), cfg)
    n_params = sum(p.numel() for p in model.parameters())
    stack, saved, seen = [""], [], set()
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda m, a: stack.append(names[m])) for m in model.modules()]
    hooks += [m.register_forward_hook(lambda m, a, o: [stack.pop(), None][1]) for m in model.modules()]

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to("cuda")
        params = {p.untyped_storage()._cdata for p in model.parameters()}

        def pack(t):
            key = t.untyped_storage()._cdata
            if key not in params and key not in seen:
                seen.add(key)
                saved.append((stack[-1], tuple(t.shape), str(t.dtype).replace("torch.", ""),
                              t.untyped_storage().nbytes()))
            return t.detach()  # not t itself: a saved output would hold its own graph alive (a cycle)

        ids = torch.zeros(batch, length, dtype=torch.long, device="cuda")
        labels = torch.zeros(batch, length, dtype=torch.long, device="cuda")
        if task_of(cfg) == "mlm":
            labels[:, ::7] = IGNORE_INDEX  # fake tensors carry no values; only shapes matter
        original_sdpa = F.scaled_dot_product_attention
        was = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        F.scaled_dot_product_attention = _FlashLikeAttention.apply
        # autocast("cuda") turns itself off without a CUDA device; the flags themselves take effect on fake tensors
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        torch.set_autocast_enabled("cuda", True)
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                logits = model(ids)
                torch.set_autocast_enabled("cuda", False)
                training_loss_sum(model, logits, labels)
        finally:
            # the process's autocast state as it was (a test process goes on), its cast cache emptied
            torch.set_autocast_enabled("cuda", was[0])
            torch.set_autocast_dtype("cuda", was[1])
            torch.clear_autocast_cache()
            F.scaled_dot_product_attention = original_sdpa
            for h in hooks:
                h.remove()

    per_layer = collections.defaultdict(int)
    for path, _, _, nbytes in saved:
        per_layer[layer_of(path)] += nbytes
    layers = cfg.model.num_layers
    tokens = batch * length
    layer_key = next((k for k in per_layer if k.endswith("*")), None)
    one_layer = per_layer.get(layer_key, 0) / layers if layer_key else 0
    by_op = collections.defaultdict(int)
    for path, _, _, nbytes in saved:
        if layer_key and layer_of(path) == layer_key:
            by_op[re.sub(r"^.*?\d+\.?", "", path) or "(block)"] += nbytes // layers
    activations = sum(n for *_, n in saved)
    return dict(
        preset=preset, seq_len=length, tokens=tokens, layers=layers, params=n_params,
        activations_bytes=activations, activations_gib=round(activations / GIB, 2),
        per_layer_gib=round(one_layer / GIB, 3),
        per_layer_hidden_units=round(one_layer / (tokens * cfg.model.hidden_size * 2), 1),
        outside_layers_gib={k: round(v / GIB, 2) for k, v in per_layer.items() if k != layer_key},
        per_layer_by_op_bytes=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        optimizer_gib=round(n_params * OPTIMIZER_BYTES_PER_PARAM / GIB, 2),
        zero1_extra_gib=round(n_params * ZERO1_EXTRA_BYTES_PER_PARAM / GIB, 2),
        forward_end_gib=round((activations + n_params * (OPTIMIZER_BYTES_PER_PARAM + ZERO1_EXTRA_BYTES_PER_PARAM))
                              / GIB, 1),
        detail=[s for s in saved if layer_key and layer_of(s[0]) == layer_key
                and re.match(r"^.*?\.0\.", s[0] + ".")] if os.environ.get("DETAIL") == "1" else None,
    )


def main() -> int:
    from common import save

    rows = []
    for spec in filter(None, os.environ.get("ROWS", DEFAULT_ROWS).split(",")):
        preset, length = spec.split("@")
        row = measure(preset, int(length))
        rows.append(row)
        print(f"\n{preset} @{length}: {row['tokens']:,} tokens, {row['layers']} layers, {row['params'] / 1e6:.0f}M "
              f"params; kept for the backward {row['activations_gib']} GiB = {row['per_layer_gib']} GiB per layer "
              f"({row['per_layer_hidden_units']} x (tokens, hidden) in bf16) + {row['outside_layers_gib']}; "
              f"optimizer {row['optimizer_gib']} GiB (+{row['zero1_extra_gib']} ZeRO-1); "
              f"held at the end of the forward ~{row['forward_end_gib']} GiB (the peak adds the backward's transients)")
        for op, nbytes in row["per_layer_by_op_bytes"].items():
            if nbytes >= row["activations_bytes"] / 1000:
                print(f"    {op:<32} {nbytes / GIB:7.3f} GiB per layer")
        for path, shape, dtype, nbytes in row["detail"] or []:
            print(f"      {path:<40} {str(shape):<24} {dtype:<9} {nbytes / 2**20:9.1f} MiB")
    name = os.environ.get("RESULT_NAME", "activation_memory.json")
    if os.environ.get("SAVE", "1") == "1":
        save(name, dict(rows=rows, mlp_recompute=os.environ.get("M2DIST_MLP_RECOMPUTE", "none")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
