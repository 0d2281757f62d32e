"""``m2dist sweep report DIR``: every run below DIR -> a table (CSV, Markdown) and PNG plots of tokens/s, MFU
and scaling efficiency against GPUs and sequence length.

Per run, from its ``metrics.jsonl`` (trainer), ``config.yaml`` (the resolved config the trainer saved) and
``slurm/attempts.jsonl`` (train.sbatch): throughput and MFU are medians over the logged training steps
without the first one (start-up and compilation), memory is the peak. Scaling efficiency compares
tokens/s per GPU with the smallest run of the same model, sequence length and tensor- and context-parallel sizes:
1.0 is perfect linear scaling. "GPUs" means ranks: on CPU test runs, processes.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import yaml

from m2dist.jobs import records


@dataclass
class RunSummary:
    run: str
    model: str
    seq_len: int
    tp: int
    cp: int
    dp: int  # world / (tp x cp)
    nodes: int
    gpus: int
    steps: int
    final_loss: Optional[float]
    tokens_per_s: Optional[float]
    tokens_per_s_per_gpu: Optional[float]
    mfu: Optional[float]
    mem_gib: Optional[float]
    scaling_efficiency: Optional[float] = None


def _median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize_run(run_dir: Path, root: Path) -> Optional[RunSummary]:
    metrics = records.train_metrics(run_dir)
    config_path = run_dir / "config.yaml"
    if not metrics or not config_path.is_file():
        return None
    cfg = yaml.safe_load(config_path.read_text())
    model, parallel = cfg.get("model", {}), cfg.get("parallel", {})
    steady = metrics[1:] if len(metrics) > 1 else metrics
    starts = [a for a in records.attempts(run_dir) if a.get("event") == "start"]
    gpus = int(starts[-1]["world_size"]) if starts else 1
    nodes = int(starts[-1]["nodes"]) if starts else 1
    tp, cp = int(parallel.get("tensor", 1)), int(parallel.get("context", 1))
    tps = _median([m.get("tokens_per_s") for m in steady])
    mems = [m.get("mem_gib") for m in metrics if m.get("mem_gib") is not None]
    return RunSummary(
        run=str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        model=f"{model.get('arch')} h{model.get('hidden_size')} l{model.get('num_layers')}",
        seq_len=int(model.get("max_seq_len", 0)), tp=tp, cp=cp, dp=max(1, gpus // (tp * cp)), nodes=nodes,
        gpus=gpus,
        steps=int(metrics[-1]["step"]), final_loss=metrics[-1].get("loss"), tokens_per_s=tps,
        tokens_per_s_per_gpu=None if tps is None else tps / gpus,
        mfu=_median([m.get("mfu") for m in steady]), mem_gib=max(mems) if mems else None)


def add_scaling_efficiency(rows: list[RunSummary]) -> None:
    series: dict[tuple, list[RunSummary]] = {}
    for row in rows:
        series.setdefault((row.model, row.seq_len, row.tp, row.cp), []).append(row)
    for group in series.values():
        base = min(group, key=lambda r: r.gpus)
        for row in group:
            if row.tokens_per_s_per_gpu is not None and base.tokens_per_s_per_gpu:
                row.scaling_efficiency = row.tokens_per_s_per_gpu / base.tokens_per_s_per_gpu


def collect(root: Path) -> list[RunSummary]:
    root = root.resolve()
    rows = [s for path in sorted(root.rglob("metrics.jsonl")) if (s := summarize_run(path.parent, root))]
    add_scaling_efficiency(rows)
    rows.sort(key=lambda r: (r.model, r.seq_len, r.tp, r.cp, r.gpus, r.run))
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_csv(rows: list[RunSummary], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(RunSummary)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def markdown_table(rows: list[RunSummary]) -> str:
    names = [fl.name for fl in fields(RunSummary)]
    out = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        out.append("| " + " | ".join(_cell(getattr(row, n)) for n in names) + " |")
    return "\n".join(out) + "\n"


def _plot(rows: list[RunSummary], x: str, series_of, metrics: list[tuple[str, str]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    series: dict[str, list[RunSummary]] = {}
    for row in rows:
        series.setdefault(series_of(row), []).append(row)
    for ax, (metric, label) in zip(axes[0], metrics):
        for name, group in sorted(series.items()):
            points = sorted((getattr(r, x), getattr(r, metric)) for r in group if getattr(r, metric) is not None)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xticks(sorted({getattr(r, x) for r in rows}))
        ax.set_xlabel({"gpus": "GPUs (ranks)", "seq_len": "sequence length"}[x])
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data (e.g. MFU on CPU)", ha="center", va="center", transform=ax.transAxes)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12 if handles else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(root: Path, out_dir: Optional[Path] = None) -> dict[str, Path]:
    """Write report.csv, report.md and the plots into ``out_dir`` (default: ``root``); returns their paths."""
    root = root.resolve()
    out_dir = (out_dir or root).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect(root)
    paths = {"csv": out_dir / "report.csv", "md": out_dir / "report.md",
             "vs_gpus": out_dir / "scaling_vs_gpus.png", "vs_seq_len": out_dir / "scaling_vs_seq_len.png"}
    write_csv(rows, paths["csv"])
    paths["md"].write_text(f"# Sweep report: {root}\n\n{len(rows)} run(s). " + __doc__.split("\n\n")[1].replace("\n", " ")
                           + "\n\n" + markdown_table(rows))
    _plot(rows, "gpus", lambda r: f"{r.model} seq{r.seq_len} tp{r.tp} cp{r.cp}",
          [("tokens_per_s", "tokens/s"), ("mfu", "MFU"), ("scaling_efficiency", "scaling efficiency")],
          "Scaling with GPUs", paths["vs_gpus"])
    _plot(rows, "seq_len", lambda r: f"{r.model} {r.gpus} GPUs tp{r.tp} cp{r.cp}",
          [("tokens_per_s", "tokens/s"), ("mfu", "MFU")], "Sequence length", paths["vs_seq_len"])
    return paths
