"""Run by ``torchrun --nproc_per_node=2`` from test_tensor_parallel.py: TP=2 vs a TP=1 reference on every rank.

For each tiny preset: build the reference (full, single-device) model and a TP=2 copy from the same seed, then check
(1) the TP model's state dict is exactly ``shard_state_dict`` of the reference's, and gathering it back is exact;
(2) gathered logits, the loss and the argmax equal the reference's; (3) every parameter's gradient, gathered to its
full shape, equals the reference gradient; (4) 5 AdamW steps give the same losses, and the gathered weights after
them equal the reference's. Rank 0 writes a JSON report with the largest differences seen.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

# Tolerances (fp32). TP changes only the order of floating-point sums (partial sums of the row-parallel layers are
# all-reduced, filter gradients are summed over ranks), so differences are a few ulps of the values involved.
# After the Adam steps weights differ by more than ulps: Adam divides by sqrt(v), so for gradients near zero an ulp-level
# difference moves a weight by a visible fraction of lr (3e-3); 5e-4 is < 17% of one step (seen: up to 1.4e-4).
TOL = {"logits": 1e-5, "loss": 1e-5, "grad_rel": 1e-4, "grad_abs": 1e-6, "param_abs": 5e-4, "step_loss": 1e-5}


# Variants beyond the presets: M2-BERT-80M's mixer pre-norm with dropout 0.1 (the sharded GLU dropout draws TP=1's
# mask, so the runs still agree), and 8 Monarch blocks (two gate/value block pairs per rank).
VARIANTS = [("m2-bert-tiny", {"dropout": 0.1, "mixer_pre_norm": True}), ("m2-gpt-tiny", {"nblocks": 8})]
RECOMPUTE = [("m2-bert-tiny", {"dropout": 0.1}), ("bert-tiny", {"dropout": 0.1})]
CONVERTED = ["m2-gpt-tiny", "m2-bert-tiny"]
GROUPS = None


def batch(cfg, seed, bsz=2, length=32, pad=False):
    g = torch.Generator().manual_seed(seed)
    if cfg.arch in ("m2_vit", "vit"):
        images = torch.randn(bsz, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
        return images, torch.randint(0, cfg.num_classes, (bsz,), generator=g), None
    ids = torch.randint(0, cfg.vocab_size, (bsz, length), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (bsz, length), generator=g)
    labels[torch.rand(bsz, length, generator=g) < 0.3] = -100
    mask = None
    if pad:
        mask = torch.ones(bsz, length, dtype=torch.long)
        mask[1, length - 5:] = 0
        labels[1, length - 5:] = -100
    return ids, labels, mask


def ref_loss(model, ids, labels, mask):
    logits = model(ids, mask) if mask is not None else model(ids)
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                             reduction="none").view(labels.shape)
    valid = (labels != -100).float()
    return logits, (losses * valid).sum() / valid.sum()


def tp_loss(model, ids, labels, mask):
    from m2dist.parallel import loss_functions

    logits = model(ids, mask) if mask is not None else model(ids)
    losses = loss_functions(model).cross_entropy(logits, labels)  # vocab-parallel for the LMs, local for ViT
    valid = (labels != -100).float()
    return logits, (losses * valid).sum() / valid.sum()


def gather_grads(model):
    from m2dist.parallel.plan import plan_for_model
    from m2dist.parallel.sharding import gather_tensor

    out = {}
    size = dist.get_world_size()
    plan = plan_for_model(model)
    for name, p in model.named_parameters():
        spec = plan[name]
        g = p.grad.detach().contiguous()
        if spec.replicated:
            out[name] = g
            continue
        pieces = [torch.empty_like(g) for _ in range(size)]
        dist.all_gather(pieces, g)
        out[name] = gather_tensor(pieces, spec)
    return out


def replicated_grads_agree(model):
    """Replicated parameters must get the same gradient on every TP rank (else their copies drift apart)."""
    from m2dist.parallel.plan import plan_for_model

    worst = 0.0
    plan = plan_for_model(model)
    for name, p in model.named_parameters():
        if plan[name].replicated:
            other = p.grad.detach().clone()
            dist.broadcast(other, 0)
            worst = max(worst, (other - p.grad).abs().max().item())
    return worst


def check_preset(name, overrides, report):
    from m2dist.models import preset_config, build_model
    from m2dist.parallel import loss_functions
    from m2dist.parallel.sharding import gather_full_state_dict, gather_state_dict, shard_state_dict
    from m2dist.parallel.tensor_parallel import apply_tensor_parallel

    rank, size = dist.get_rank(), dist.get_world_size()
    extra = {} if name.endswith("vit-tiny") else {"max_seq_len": 32}
    cfg = preset_config(name, **extra, **overrides)
    torch.manual_seed(1234)
    ref = build_model(cfg)
    torch.manual_seed(1234)
    tp = apply_tensor_parallel(build_model(cfg), cfg, universal_info=(name == "m2-gpt-tiny"))
    r = {"params_full": sum(p.numel() for p in ref.parameters()),
         "params_local": sum(p.numel() for p in tp.parameters())}

    # (1) initialisation and state-dict maps
    full_sd = ref.state_dict()
    expected = shard_state_dict(full_sd, rank, size, cfg)
    local_sd = tp.state_dict()
    assert set(expected) == set(local_sd), set(expected) ^ set(local_sd)
    r["init_exact"] = all(torch.equal(expected[k], local_sd[k]) for k in expected)
    pieces = [shard_state_dict(full_sd, q, size, cfg) for q in range(size)]
    back = gather_state_dict(pieces, cfg)
    r["roundtrip_exact"] = all(torch.equal(back[k], full_sd[k]) for k in full_sd)
    gathered = gather_full_state_dict(tp)
    r["gather_live_exact"] = all(torch.equal(gathered[k], full_sd[k]) for k in full_sd)

    # (2) forward
    train_mode = overrides.get("dropout", 0.0) > 0
    ref.train(train_mode)
    tp.train(train_mode)
    pad = cfg.arch in ("m2_bert", "bert")  # BERT batches carry padding (attention_mask)
    ids, labels, mask = batch(cfg, 0, pad=pad)
    torch.manual_seed(99)  # dropout streams (identical on both ranks, as in the trainer)
    logits_ref, loss_ref = ref_loss(ref, ids, labels, mask)
    torch.manual_seed(99)
    logits_tp, loss_tp = tp_loss(tp, ids, labels, mask)
    functions = loss_functions(tp)
    r["vocab_parallel_loss"] = functions.cross_entropy is not loss_functions(ref).cross_entropy
    full_logits = functions.gather_logits(logits_tp)
    r["logits_max_abs"] = (full_logits - logits_ref).abs().max().item()
    r["loss_ref"], r["loss_tp"] = loss_ref.item(), loss_tp.item()
    argmax = functions.argmax(logits_tp)
    r["argmax_equal"] = bool(torch.equal(argmax, logits_ref.argmax(-1)))

    # (3) gradients
    loss_ref.backward()
    loss_tp.backward()
    grads = gather_grads(tp)
    ref_grads = dict(ref.named_parameters())
    # Per parameter: max |g_tp - g_ref| against atol + rtol * max |g_ref| (a gradient near zero has no relative scale).
    worst, worst_name, worst_abs = 0.0, None, 0.0
    for k, g in grads.items():
        want = ref_grads[k].grad
        diff = (g - want).abs().max().item()
        ratio = diff / (TOL["grad_abs"] + TOL["grad_rel"] * want.abs().max().item())
        if ratio > worst:
            worst, worst_name = ratio, k
        worst_abs = max(worst_abs, diff)
    r["grad_max_abs"], r["grad_tol_ratio"], r["grad_worst"] = worst_abs, worst, worst_name
    r["grad_count"] = len(grads)
    r["replicated_grad_spread"] = replicated_grads_agree(tp)
    # DeepSpeed's clipping norm with the TP attributes (mpu: sharded params from every rank, replicated ones once).
    from deepspeed.runtime.utils import clip_grad_norm_

    tp_norm = float(clip_grad_norm_(list(tp.parameters()), max_norm=1e9, mpu=GROUPS))
    ref_norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=1e9))
    r["grad_norm_rel_diff"] = abs(tp_norm - ref_norm) / ref_norm

    # (4) five AdamW steps on the shards (plain torch AdamW, as the trainer's ZeRO-0 engine does)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.1)
    opt_tp = torch.optim.AdamW(tp.parameters(), lr=3e-3, weight_decay=0.1)
    opt_ref.step(); opt_tp.step()  # the step of the gradients checked above
    losses_ref, losses_tp = [], []
    for step in range(1, 6):
        ids, labels, mask = batch(cfg, step, pad=pad)
        for model, opt, fn, out in ((ref, opt_ref, ref_loss, losses_ref), (tp, opt_tp, tp_loss, losses_tp)):
            opt.zero_grad()
            torch.manual_seed(100 + step)
            _, loss = fn(model, ids, labels, mask)
            loss.backward()
            opt.step()
            out.append(loss.item())
    r["losses_ref"], r["losses_tp"] = losses_ref, losses_tp
    r["step_loss_max_abs"] = max(abs(a - b) for a, b in zip(losses_ref, losses_tp))
    after = gather_full_state_dict(tp)
    r["param_max_abs_after"] = max((after[k] - v).abs().max().item() for k, v in ref.state_dict().items())
    report[name + "".join(f"+{k}={v}" for k, v in sorted(overrides.items()))] = r


def check_recompute(name, overrides, report):
    """Activation checkpointing (the trainer's non-reentrant torch checkpoint per layer) with dropout on: the
    recomputed forward must redraw the same sharded-dropout / attention-dropout masks, so gradients are unchanged."""
    from m2dist.models import build_model, preset_config
    from m2dist.parallel.tensor_parallel import apply_tensor_parallel
    from m2dist.train.layer_options import _checkpoint_forward, layer_list

    cfg = preset_config(name, max_seq_len=32, **overrides)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(1234)
        model = apply_tensor_parallel(build_model(cfg), cfg, universal_info=False).train()
        if recompute:
            for layer in layer_list(model, cfg.num_layers):
                _checkpoint_forward(layer)
        ids, labels, mask = batch(cfg, 7, pad=True)
        torch.manual_seed(5)
        tp_loss(model, ids, labels, mask)[1].backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    report[f"recompute:{name}"] = {"grad_max_abs": max((grads[0][k] - grads[1][k]).abs().max().item()
                                                         for k in grads[0])}


def _convert_in_place(model):
    """Stand-in for the kernel converter (``m2dist.kernels.accelerate``): every parameter-free compute module and
    every Monarch layer gets a subclass of its class, swapped in place (what the converter does), so nothing may rely
    on exact classes."""
    from m2dist.models.sequence_mixer import MixerCore
    from m2dist.monarch.structured import StructuredLinear

    for module in model.modules():
        if isinstance(module, (MixerCore, StructuredLinear)) or type(module).__name__ == "GeluGLU":
            module.__class__ = type("Converted" + type(module).__name__, (type(module),), {})
    return model


def check_converter_order(name, report):
    """The plan composes with a kernel converter in either order: converted before TP (the trainer's order) or
    after it, the TP model's logits and gradients equal the single-device reference's."""
    from m2dist.models import build_model, preset_config
    from m2dist.parallel import loss_functions
    from m2dist.parallel.tensor_parallel import apply_tensor_parallel

    cfg = preset_config(name, max_seq_len=32)
    torch.manual_seed(1234)
    ref = build_model(cfg)
    ids, labels, mask = batch(cfg, 3, pad=cfg.arch in ("m2_bert", "bert"))
    logits_ref, loss_ref = ref_loss(ref, ids, labels, mask)
    loss_ref.backward()
    out = {}
    for order in ("convert_then_tp", "tp_then_convert"):
        torch.manual_seed(1234)
        model = build_model(cfg)
        if order == "convert_then_tp":
            model = apply_tensor_parallel(_convert_in_place(model), cfg, universal_info=False)
        else:
            model = _convert_in_place(apply_tensor_parallel(model, cfg, universal_info=False))
        logits, loss = tp_loss(model, ids, labels, mask)
        loss.backward()
        grads = gather_grads(model)
        out[order] = {
            "logits_max_abs": (loss_functions(model).gather_logits(logits) - logits_ref).abs().max().item(),
            "grad_tol_ratio": max((g - ref.get_parameter(k).grad).abs().max().item()
                                  / (TOL["grad_abs"] + TOL["grad_rel"] * ref.get_parameter(k).grad.abs().max().item())
                                  for k, g in grads.items()),
            "converted": sum(type(m).__name__.startswith("Converted") for m in model.modules()),
        }
    report[f"converter:{name}"] = out


def main():
    dist.init_process_group("gloo")
    import deepspeed

    from launch.distributed import disable_deepspeed_shm_op

    disable_deepspeed_shm_op()  # else init_distributed JIT-builds an op (~90 s)
    deepspeed.init_distributed("gloo")  # deepspeed.comm, for its mpu-aware gradient norm
    from m2dist.parallel import init_groups

    t0 = time.time()
    global GROUPS
    GROUPS = init_groups(dist.get_world_size(), seed=1234)
    report = {"tolerances": TOL}
    presets = sys.argv[2].split(",")
    for name in presets:
        check_preset(name, {}, report)
    for name, overrides in VARIANTS:
        check_preset(name, overrides, report)
    for name, overrides in RECOMPUTE:
        check_recompute(name, overrides, report)
    for name in CONVERTED:
        check_converter_order(name, report)
    report["wall_s"] = time.time() - t0
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
