"""Context parallelism at 64K-1M tokens, predicted for M2-GPT-360M from one measured GPU number and one assumed
link bandwidth (no multi-GPU machine was lent to measure it; issue 16, item 6).

Per step of one sequence of L tokens split over CP ranks, per rank:

* compute = (L / CP) / (the trainer's measured tokens/s on one GPU), i.e. the per-token cost measured at the
  longest length the results file has (``train_bench``'s M2-GPT-360M trainer rows) held constant. That is
  optimistic at longer L: the FFT's share grows with log L (the bare M2 layer stack lost 3-12% from 2K to 16K in
  ``layer_bench``), and a 1M-token sequence needs activation checkpointing to fit, which adds about a third;
* communication = the bytes ``m2dist.parallel.context_volume`` counts for method (a) (two all-to-alls and the
  short conv's halo per mixer, forward and backward; equal to what the implementation sends, tested), over all
  layers, divided by the assumed all-to-all bandwidth per GPU. Nothing overlaps compute in the implementation, so
  the two add.

    python3 benchmarks/cp_predict.py                       # the tokens/s of MEASURED below
    python3 benchmarks/cp_predict.py --tokens-per-s 60000 --link-gbps 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEASURED = os.path.join(ROOT, "benchmarks", "results", "run22_table_long.json")


def measured_tokens_per_s(path: str, preset: str = "m2-gpt-360m") -> tuple[float, int]:
    """(tokens/s, L) of ``preset``'s trainer row at the longest L measured in a ``train_bench`` results file."""
    with open(path) as f:
        rows = [r for r in json.load(f)["rows"]
                if r.get("preset") == preset and r.get("mode") == "trainer" and r.get("tokens_per_s")]
    if not rows:
        raise SystemExit(f"{path}: no trainer row of {preset} with tokens_per_s")
    row = max(rows, key=lambda r: r["seq_len"])
    return float(row["tokens_per_s"]), int(row["seq_len"])


def main() -> int:
    from m2dist.config import load_config
    from m2dist.parallel.context_volume import context_comm_volume

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "m2-gpt-360m.yaml"))
    p.add_argument("--tokens-per-s", type=float, default=None, help=f"default: the trainer row of {MEASURED}")
    p.add_argument("--link-gbps", type=float, default=350.0,
                   help="assumed all-to-all bandwidth per GPU, GB/s (NVLink 4 within an H200 node: 450 GB/s "
                        "per direction nominal; NCCL's all-to-all reaches less)")
    args = p.parse_args()
    model = load_config(args.config, []).model
    if args.tokens_per_s:
        rate, source = args.tokens_per_s, "given"
    else:
        rate, measured_at = measured_tokens_per_s(MEASURED)
        source = f"trainer at L={measured_at}, measured: {os.path.relpath(MEASURED, ROOT)}"
    causal = model.arch == "m2_gpt"
    print(f"{model.arch}: H={model.hidden_size}, {model.num_layers} layers, bf16; one GPU: {rate:,.0f} tokens/s "
          f"({source}); link: {args.link_gbps:g} GB/s per GPU (assumed)\n")
    print("| L | CP | tokens per rank | compute s | all-to-all + halo GiB | communication s | communication share |")
    print("|---|---|---|---|---|---|---|")
    for length in (1 << 16, 1 << 17, 1 << 18, 1 << 20):
        for cp in (2, 4, 8):
            per_layer = context_comm_volume("a", 1, length, model.hidden_size, cp, 2,
                                            residual_long_conv=model.residual_long_conv, bidirectional=not causal,
                                            short_conv_size=model.short_conv_size)["total"]
            sent = per_layer * model.num_layers
            compute = length / cp / rate
            comm = sent / (args.link_gbps * 1e9)
            print(f"| {length // 1024}K | {cp} | {length // cp:,} | {compute:.2f} | {sent / 2**30:.2f} | "
                  f"{comm:.3f} | {comm / (comm + compute):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
