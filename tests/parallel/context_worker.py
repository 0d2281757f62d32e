"""Run by ``torchrun --nproc_per_node=CP`` from test_context_conv.py: the context-parallel mixer core against the
single-device ``mixer_core`` on every rank, many cases in one process group. Rank 0 writes a JSON report.

Every rank builds the same global tensors from one seed and computes the reference itself, so the comparison needs
no communication beyond what the CP core does; the CP results are then gathered (sharded outputs and gradients) or
summed over the group (gradients of replicated inputs: conv weight/bias, full-width filters, filter-MLP params).
Errors are max |CP - reference| / max |reference| per quantity.
"""

from __future__ import annotations

import json
import sys
import traceback

import torch
import torch.distributed as dist

from m2dist.models.hyena_filter import ImplicitFilter
from m2dist.ops.mixer_core import mixer_core
from m2dist.parallel.context_conv import (CommCounter, all_to_all_dim0, context_channels,
                                          context_parallel_mixer_core, split_sequence)
from m2dist.parallel.context_volume import context_comm_volume

BATCH, HIDDEN, KSIZE = 2, 8, 3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def gather_dim(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def summed(x: torch.Tensor, group) -> torch.Tensor:
    x = x.clone()
    dist.all_reduce(x, group=group)
    return x


def make_case(length, causal, residual, masked, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    h = HIDDEN

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    t = {"z": rnd(BATCH, length, 3 * h), "w": rnd(3 * h, 1, KSIZE), "b": rnd(3 * h), "kf": rnd(h, length),
         "D": rnd(h), "out_grad": rnd(BATCH, length, h)}
    if not causal:
        t["kr"] = rnd(h, length)
    if residual:
        t.update(u=rnd(BATCH, length, h), rkf=rnd(h, length), rD=rnd(h))
        if not causal:
            t["rkr"] = rnd(h, length)
    keep = None
    if masked:
        keep = torch.ones(BATCH, length, dtype=dtype)
        keep[1, length - length // 3:] = 0  # right padding that spans a rank boundary
        keep[0, length // 2] = 0  # and an isolated masked token at a boundary (CP even)
    return t, keep


def run_case(length, causal, residual, masked, filter_rows, dtype, seed, group):
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    t, keep = make_case(length, causal, residual, masked, dtype, seed)
    ch = context_channels(HIDDEN, rank, size)

    # Reference: one device, the whole sequence.
    ref = {k: v.clone().requires_grad_() for k, v in t.items() if k != "out_grad"}

    def filt_of(p, prefix):
        return (p[prefix + "kf"], p.get(prefix + "kr"), p[prefix + "D"])

    y_ref = mixer_core(ref["z"], ref.get("u"), ref["w"], ref["b"], filt_of(ref, ""),
                       filt_of(ref, "r") if residual else None, keep)
    (y_ref * t["out_grad"]).sum().backward()

    # CP: this rank's sequence block of z, u, keep; replicated conv params; filters as all H rows or this rank's.
    cp = {}
    for k, v in t.items():
        if k in ("z", "u", "out_grad"):
            cp[k] = split_sequence(v, 1, rank, size).clone()
        elif filter_rows == "local" and k in ("kf", "kr", "D", "rkf", "rkr", "rD"):
            cp[k] = v[ch].clone()
        else:
            cp[k] = v.clone()
        if k != "out_grad":
            cp[k].requires_grad_()
    keep_local = None if keep is None else split_sequence(keep, 1, rank, size)
    counter = CommCounter()
    y = context_parallel_mixer_core(cp["z"], cp.get("u"), cp["w"], cp["b"], filt_of(cp, ""),
                                    filt_of(cp, "r") if residual else None, keep_local, group, counter=counter)
    (y * cp["out_grad"]).sum().backward()

    errs = {"y": rel(gather_dim(y.detach(), 1, group), y_ref.detach())}
    for k in ref:
        if k in ("z", "u"):
            full = gather_dim(cp[k].grad, 1, group)
        elif filter_rows == "local" and k in ("kf", "kr", "D", "rkf", "rkr", "rD"):
            full = gather_dim(cp[k].grad, 0, group)
        else:
            full = summed(cp[k].grad, group)
        errs["grad_" + k] = rel(full, ref[k].grad)

    model = context_comm_volume("a", BATCH, length, HIDDEN, size, torch.empty((), dtype=dtype).element_size(),
                                residual_long_conv=residual, bidirectional=not causal, short_conv_size=KSIZE,
                                rank=rank)
    counted = {"forward": sum(counter.forward.values()), "backward": sum(counter.backward.values())}
    volume_ok = torch.tensor([int(counted["forward"] == model["forward"] and counted["backward"] == model["backward"])])
    dist.all_reduce(volume_ok, op=dist.ReduceOp.MIN, group=group)
    return {"errors": errs, "volume_match": bool(volume_ok.item()), "counted_rank": counted,
            "model_rank": {"forward": model["forward"], "backward": model["backward"]}}


def run_filter_module_case(length, causal, seed, group):
    """The efficient filter path: ImplicitFilter generated for this rank's channels only (``f(length, channels)``),
    fed to the CP core; the filter parameters' gradients, summed over CP, equal the reference's."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    ch = context_channels(HIDDEN, rank, size)
    torch.manual_seed(seed)
    f = ImplicitFilter(HIDDEN, l_max=2 * length, order=8, emb_dim=5, bidirectional=not causal).double()
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(BATCH, length, 3 * HIDDEN, generator=g, dtype=torch.float64)
    w = torch.randn(3 * HIDDEN, 1, KSIZE, generator=g, dtype=torch.float64)
    b = torch.randn(3 * HIDDEN, generator=g, dtype=torch.float64)
    out_grad = torch.randn(BATCH, length, HIDDEN, generator=g, dtype=torch.float64)

    full = (*f(length), f.D)
    rows = (*f(length, channels=ch), f.D[ch])
    taps_err = max(rel(r, fl[ch]) for r, fl in zip(rows, full) if r is not None)

    y_ref = mixer_core(z, None, w, b, full)
    (y_ref * out_grad).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in f.named_parameters()}
    f.zero_grad()
    # The hidden features reach each MLP's output layer through its module call (so a TP hook there, copy_to_tp,
    # applies under TP x CP), once per MLP, with this rank's rows.
    entered = []
    for mlp in (f.mlp_fwd, f.mlp_rev):
        if mlp is not None:
            mlp.out.register_forward_pre_hook(
                lambda m, args: entered.append([*args[0].shape, args[1].stop - args[1].start]))
    rows = (*f(length, channels=ch), f.D[ch])
    y = context_parallel_mixer_core(split_sequence(z, 1, rank, size), None, w, b, rows, None, None, group)
    (y * split_sequence(out_grad, 1, rank, size)).sum().backward()
    errs = {"y": rel(gather_dim(y.detach(), 1, group), y_ref.detach()), "taps": taps_err}
    for n, p in f.named_parameters():
        errs["grad_" + n] = rel(summed(p.grad, group), ref_grads[n])
    return {"errors": errs, "entered": [list(s) for s in entered]}


def expect_error(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return "<no error>"


def main(out_path: str, lengths: list[int]) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    world = dist.group.WORLD
    report = {"cp": size, "cases": {}, "errors_raised": {}}
    try:
        seed = 0
        for length in lengths:
            for causal in (True, False):
                for residual in (False, True):
                    for masked in (False, True):
                        seed += 1
                        rows = "local" if seed % 2 else "full"
                        name = f"L={length},{'causal' if causal else 'bidir'},res={residual},mask={masked},{rows}"
                        report["cases"][name] = run_case(length, causal, residual, masked, rows, torch.float64,
                                                         seed, world)
        # fp32, the training dtype of the reference path: the CP core only reorders sums.
        for causal in (True, False):
            seed += 1
            name = f"fp32,L={lengths[-1]},{'causal' if causal else 'bidir'},res=True,mask=True,full"
            report["cases"][name] = run_case(lengths[-1], causal, True, True, "full", torch.float32, seed, world)
        for causal in (True, False):
            seed += 1
            report["cases"][f"filter_module,{'causal' if causal else 'bidir'}"] = run_filter_module_case(
                lengths[0], causal, seed, world)
        if size == 4:
            # Two CP=2 groups inside a world of 4: the peer ranks are group ranks, mapped to global ones.
            sub, _ = dist.new_subgroups(2)
            report["cases"]["subgroup_cp2,bidir,res=True,mask=True"] = run_case(
                lengths[0], False, True, True, "local", torch.float64, 1000, sub)

        # The point-to-point all-to-all (for backends without the collective) equals the collective.
        x = torch.randn(size, 3, 5, generator=torch.Generator().manual_seed(7 + rank), dtype=torch.float64)
        report["p2p_equals_collective"] = bool(torch.equal(all_to_all_dim0(x, method="p2p"),
                                                           all_to_all_dim0(x, method="collective")))

        # Error lines, raised before any communication.
        k_fwd = torch.zeros(HIDDEN, 8 * size)
        w, b = torch.zeros(3 * HIDDEN, 1, KSIZE), torch.zeros(3 * HIDDEN)
        report["errors_raised"]["channels"] = expect_error(lambda: context_parallel_mixer_core(
            torch.zeros(1, 8, 3 * (size + 1)), None, torch.zeros(3 * (size + 1), 1, KSIZE),
            torch.zeros(3 * (size + 1)), (torch.zeros(size + 1, 8 * size), None, None)))
        report["errors_raised"]["halo"] = expect_error(lambda: context_parallel_mixer_core(
            torch.zeros(1, 1, 3 * HIDDEN), None, w, b, (torch.zeros(HIDDEN, size), None, None)))
        report["errors_raised"]["filter_length"] = expect_error(lambda: context_parallel_mixer_core(
            torch.zeros(1, 8, 3 * HIDDEN), None, w, b, (torch.zeros(HIDDEN, 8), None, None)))
        report["errors_raised"]["filter_channels"] = expect_error(lambda: context_parallel_mixer_core(
            torch.zeros(1, 8, 3 * HIDDEN), None, w, b, (torch.zeros(HIDDEN + 1, 8 * size), None, None)))
        report["errors_raised"]["u_without_filter"] = expect_error(lambda: context_parallel_mixer_core(
            torch.zeros(1, 8, 3 * HIDDEN), torch.zeros(1, 8, HIDDEN), w, b, (k_fwd, None, None)))
    except Exception:
        report["exception"] = traceback.format_exc()
        print(report["exception"], file=sys.stderr, flush=True)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], [int(x) for x in sys.argv[2].split(",")])
