"""Plot training tokens/s against L from layer_bench JSON files (and, optionally, the anchor table).

    python benchmarks/plot.py benchmarks/results/run7_layer_bench.json \
        benchmarks/results/run9_layer_bench.json:m2_fused_compiled --anchor ../shared/reference/h200-anchor-bench.md -o benchmarks/results/layer_train_tok_s.png
"""
from __future__ import annotations

import argparse
import json
import re

STYLE = {
    "m2_fused": dict(color="tab:red", marker="o", label="M2 (project), fused mixer + GLU kernels, eager"),
    "m2_fused_compiled": dict(color="tab:red", marker="*", ls="none", ms=12, label="M2 (project), fused, compiled (run 9)"),
    "m2_kernels": dict(color="tab:pink", marker="x", ls="none", ms=9, label="M2 (project), per-op kernels, eager"),
    "m2_torch": dict(color="tab:orange", marker="s", ls="none", label="M2 (project), PyTorch path"),
    "m2_ref": dict(color="tab:gray", marker="D", ls="none", label="public M2 reference (this run)"),
    "anchor_m2_ref": dict(color="tab:gray", ls=":", marker=".", label="public M2 reference (anchor run)"),
    "tx_sdpa": dict(color="tab:blue", marker="^", label="Transformer + SDPA, eager"),
    "tx_sdpa_compiled": dict(color="tab:blue", marker="P", ls="none", ms=10, label="Transformer + SDPA, compiled"),
}


def anchor_rows(path: str) -> list:
    rows = []
    for line in open(path):
        m = re.match(r"\|\s*(m2_ref_(?:bidir|causal))\s*\|\s*(\d+)\s*\|\s*\d+\s*\|[^|]*\|[^|]*\|\s*([\d,]+)\s*\|", line)
        if m:
            rows.append(dict(model="anchor_" + m.group(1), L=int(m.group(2)), train_tok_per_s=int(m.group(3).replace(",", ""))))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", help="layer_bench JSON files; FILE:prefix1,prefix2 keeps only those models")
    ap.add_argument("--anchor")
    ap.add_argument("-o", "--out", default="benchmarks/results/layer_train_tok_s.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for spec in args.files:
        path, _, keep = spec.partition(":")
        prefixes = tuple(filter(None, keep.split(",")))
        rows += [r for r in json.load(open(path))["rows"]
                 if r.get("train_tok_per_s") and (not prefixes or r["model"].startswith(prefixes))]
    if args.anchor:
        rows += anchor_rows(args.anchor)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, d in zip(axes, ("bidir", "causal")):
        for key, style in STYLE.items():
            pts = sorted((r["L"], r["train_tok_per_s"]) for r in rows if r["model"] == f"{key}_{d}")
            if pts:
                ax.plot(*zip(*pts), **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length L (32768 tokens per step)")
        ax.set_title(f"12 layers, d=768, bf16, H200 — {d}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training tokens/s (fwd+bwd)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
