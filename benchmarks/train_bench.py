"""Training throughput of what users run, beside the bare model, in one run.

Each row (a preset at a sequence length, a fixed number of tokens per step) runs

* ``trainer``: ``m2dist.train.trainer.Trainer`` as ``m2dist train`` builds it -- the DeepSpeed engine, the streaming
  loader over a prepared MDS, metrics.jsonl and TensorBoard -- with the config in ``configs/<preset>.yaml``;
* ``bare``: the same model from the same seed in a plain loop: fp32 weights, the forward under
  ``torch.autocast(bfloat16)``, fused ``torch.optim.AdamW`` with the same param groups and schedule, gradient
  clipping, and the same batches (read once from the same loader and kept on the GPU), so its losses are the
  reference curve for the trainer's.

Each (row, mode) runs in a process of its own, so no measurement sees what another left on the device.
For both: median step time after ``WARMUP`` steps, tokens/s, MFU (3x the forward FLOPs of
``m2dist.models.flops_per_token`` over the device's dense bf16 peak), peak allocated memory, and the loss of every
step. Rows go to ``train_bench.json`` (``$OUT`` or ``benchmarks/results/``) and ``train_bench.png``.

Data: ``DATA`` (default ``.bench_data``) is prepared when missing, through the real commands: a corpus of the
docstrings of the installed torch and of the standard library (English prose about code, a few million
characters) as Pile-style ``.jsonl.zst``, ``m2dist tokenizer train`` (8192 pieces), and one ``m2dist prep pile``
(packed) per sequence length. The model's vocabulary is set to the paper's sizes (50304 GPT, 30528 BERT).

Knobs (environment): ``ROWS`` (comma list of ``preset@L``; default the ten rows below), ``TOKENS`` (per step,
32768), ``STEPS`` (timed steps, 15), ``WARMUP`` (5; also the
steps between host syncs, as the trainer's ``logging.every``: times are interval means), ``MODES`` (``trainer,bare``), ``VARIANTS`` (trainer variants:
``name:key=value,key=value;name2:...``; default one variant ``default`` with no overrides), ``TRAINER_ARGS``
(overrides added to every trainer run), ``BUDGET_S`` (start no row after this many seconds), ``PROFILE`` (N: also
profile N trainer steps and N bare steps of the first row; prints the top CUDA ops and where the GPU waits;
``KEEP_TRACE=1`` also keeps the profiler's traces; ``PROFILE_SHAPES=1`` adds a table of the ops by input shape,
``PROFILE_HOST=1`` one of the host time by phase and op),
``RESULT_NAME``,
``PREP_ONLY=1`` (prepare the data and stop; works on CPU).

    python3 benchmarks/train_bench.py                                        # every row (~10+ min: split it)
    ROWS=m2-gpt-360m@2048,gpt-360m@2048 python3 benchmarks/train_bench.py
    m2dist bench train                                                       # the same
"""
from __future__ import annotations

import ast
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_ROWS = ("m2-gpt-360m@2048,gpt-360m@2048,m2-gpt-360m@8192,gpt-360m@8192,m2-gpt-360m@16384,gpt-360m@16384,"
                "m2-bert-80m@128,bert-base@128,m2-bert-80m@2048,bert-base@2048")
VOCAB = {"causal_lm": 50304, "mlm": 30528}  # the paper's vocabulary sizes (GPT-2's padded, BERT's)
TOKENIZER_PIECES = int(os.environ.get("BENCH_TOKENIZER_PIECES", 8192))
# ~2.5M tokens: 70+ steps of 32K tokens at every length, and the prepared data small enough to carry to a GPU
# machine. The CPU test makes a smaller one.
MAX_CORPUS_CHARS = int(os.environ.get("BENCH_CORPUS_CHARS", 9_000_000))


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# ------------------------------------------------------------------------------------------------------ data
def docstrings(top: str):
    """Docstrings (> 200 characters) of every module, class and function under ``top``, in a fixed order."""
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 200:
                        yield doc


def write_corpus(folder: str) -> None:
    """``train/NN.jsonl.zst`` and ``val.jsonl.zst`` (every 50th document) in The Pile's format."""
    import torch
    import zstandard

    docs, total = [], 0
    for doc in itertools.chain(docstrings(os.path.dirname(torch.__file__)), docstrings(os.path.dirname(os.__file__))):
        if total > MAX_CORPUS_CHARS:
            break
        docs.append(doc)
        total += len(doc)
    os.makedirs(os.path.join(folder, "train"), exist_ok=True)
    val = [d for i, d in enumerate(docs) if i % 50 == 0]
    train = [d for i, d in enumerate(docs) if i % 50 != 0]
    parts = {os.path.join(folder, "val.jsonl.zst"): val}
    for p in range(4):
        parts[os.path.join(folder, "train", f"{p:02d}.jsonl.zst")] = train[p::4]
    for path, rows in parts.items():
        data = "".join(json.dumps({"text": d, "meta": {"pile_set_name": "Docstrings"}}) + "\n" for d in rows)
        with open(path, "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(data.encode()))
    print(f"corpus: {len(train)} train + {len(val)} val documents, {sum(map(len, docs)):,} characters", flush=True)


def m2dist_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "m2dist", *args], cwd=ROOT, check=True)


def prepare_data(root: str, lengths: list[int]) -> str:
    """``root/tok.model`` and ``root/L<n>/{train,val}`` for each length; finished parts are reused."""
    corpus, tok = os.path.join(root, "corpus"), os.path.join(root, "tok.model")
    if not os.path.exists(os.path.join(corpus, "val.jsonl.zst")):
        write_corpus(corpus)
    if not os.path.exists(tok):
        m2dist_cli("tokenizer", "train", "--input", os.path.join(corpus, "train"), "--format", "pile",
                   "--vocab-size", str(TOKENIZER_PIECES), "--output", os.path.join(root, "tok"))
    workers = str(min(8, os.cpu_count() or 1))
    for n in sorted(set(lengths)):
        out = os.path.join(root, f"L{n}")
        if not os.path.exists(os.path.join(out, "train", "index.json")):
            m2dist_cli("prep", "pile", "--input", os.path.join(corpus, "train"), "--output", out, "--tokenizer", tok,
                       "--seq-len", str(n), "--workers", workers)
        if not os.path.exists(os.path.join(out, "val", "index.json")):
            m2dist_cli("prep", "pile", "--input", os.path.join(corpus, "val.jsonl.zst"), "--split", "val",
                       "--output", out, "--tokenizer", tok, "--seq-len", str(n))
    return tok


# ------------------------------------------------------------------------------------------------------ rows
def row_config(preset: str, length: int, data: str, tok: str, run_dir: str, overrides: list[str]):
    from m2dist.config import load_config

    batch = max(1, env_int("TOKENS", 32768) // length)
    steps = env_int("WARMUP", 5) + env_int("STEPS", 15)
    kind = "mlm" if "bert" in preset else "causal_lm"
    path = os.path.join(ROOT, "configs", f"{preset}.yaml")
    if not os.path.exists(path):  # the tiny presets, for CPU smoke runs of this script
        path = os.path.join(ROOT, "configs", "smoke", f"{preset}.yaml")
    return load_config(path, [
        f"model.max_seq_len={length}", f"model.vocab_size={VOCAB[kind]}", f"data.kind={kind}",
        f"data.path={data}/L{length}", f"data.tokenizer={tok}", f"trainer.global_batch_size={batch}",
        f"trainer.micro_batch_size={batch}", f"trainer.max_steps={steps}", "trainer.eval_every=0",
        "trainer.resume=none", "checkpoint.every=0", f"checkpoint.dir={run_dir}/checkpoints",
        f"trainer.run_dir={run_dir}", f"logging.every={interval()}", "schedule.warmup_steps=5", *overrides])


def interval() -> int:
    """Steps between host syncs, as in the trainer's logging interval: the first interval is the warm-up."""
    return env_int("WARMUP", 5)


def summarize(step_times: list[float], losses: list[float], mem_gib: float, cfg, fpt: float, peak) -> dict:
    """``step_times``: the mean step time of each interval; the first (the warm-up) is left out."""
    dt = statistics.median(step_times[1:] or step_times)
    tokens = cfg.trainer.global_batch_size * cfg.model.max_seq_len
    tok_s = tokens / dt
    return dict(step_ms=round(dt * 1e3, 2), tokens_per_s=round(tok_s), mfu=None if peak is None else
                round(3 * fpt * tok_s / peak, 4), peak_mem_gib=round(mem_gib, 2), losses=[round(x, 5) for x in losses],
                interval_step_ms=[round(t * 1e3, 2) for t in step_times])


def run_trainer(cfg, profile_steps: int = 0) -> dict:
    import torch

    from m2dist.parallel import destroy_groups
    from m2dist.train.trainer import Trainer

    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    trainer = Trainer(cfg)
    try:
        trainer.fit()
        phases = [(trainer, "_next_batch", "loader"), (trainer.engine, "forward", "forward"),
                  (trainer.engine, "backward", "backward"), (trainer.engine, "step", "optimizer step")]
        profile = (profile_table(trainer.train_step, profile_steps, phases, os.path.basename(cfg.trainer.run_dir))
                   if profile_steps else None)
    finally:
        trainer.close()
        destroy_groups()
        ds_config = trainer.ds_config
        del trainer
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    with open(os.path.join(cfg.trainer.run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if '"loss"' in line]
    return dict(records=records, ds_config=ds_config, profile=profile)


def run_bare(cfg, device, profile_steps: int = 0) -> dict:
    """The plain loop (see the module docstring), on the batches the trainer's loader gives first."""
    import torch

    from m2dist.data import build_dataloader
    from m2dist.data.contract import ATTENTION_MASK, IGNORE_INDEX, task_of
    from m2dist.kernels import accelerate
    from m2dist.models import build_model
    from m2dist.train.layer_options import apply_layer_options
    from m2dist.train.metrics import memory_gib
    from m2dist.train.optimizer import build_optimizer
    from m2dist.train.schedule import build_scheduler
    from m2dist.train.tasks import forward, training_loss_sum

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    steps = cfg.trainer.max_steps
    loader = build_dataloader(cfg.data, split=cfg.data.train_split, micro_batch_size=cfg.trainer.micro_batch_size,
                              seq_len=cfg.model.max_seq_len)
    batches = []
    # On the device before timing, but for the padding mask: the trainer decides on the loader's host copy whether
    # a batch needs one (m2dist.train.tasks.forward), and so does this loop.
    while len(batches) < steps:
        for batch in loader:
            batches.append({k: v.to(device) if torch.is_tensor(v) and k != ATTENTION_MASK else v
                            for k, v in batch.items()})
            if len(batches) == steps:
                break
    del loader
    torch.manual_seed(cfg.trainer.seed)
    model = apply_layer_options(accelerate(build_model(cfg.model)), cfg).to(device)  # the trainer's order
    optimizer = build_optimizer(model, cfg, str(device))
    scheduler = build_scheduler(optimizer, cfg.schedule, steps)
    task = task_of(cfg)
    on_gpu = device.type == "cuda"

    def step(batch) -> "torch.Tensor":
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            logits, labels = forward(model, batch, task, torch.float32, device)
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        loss = training_loss_sum(model, logits, labels) / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip, foreach=True)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    model.train()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    # Synced every interval() steps, like the trainer's logged steps: the loss read there is the one compared.
    times, losses, k = [], [], interval()
    sync()
    t0 = time.perf_counter()
    for i, batch in enumerate(batches, 1):
        loss = step(batch)
        if i % k == 0 or i == len(batches):
            losses.append(float(loss))
            now = time.perf_counter()
            times.append((now - t0) / (k if i % k == 0 else i % k))
            t0 = now
    profile = profile_table(lambda: float(step(batches[-1])), profile_steps, [(model, "forward", "forward")],
                            os.path.basename(cfg.trainer.run_dir)) if profile_steps else None
    mem = memory_gib(str(device))
    del model, optimizer, batches
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return dict(times=times, losses=losses, mem=mem, profile=profile)


def profile_table(fn, steps: int, phases=(), name: str = "steps") -> str:
    """The top CUDA ops of ``steps`` calls of ``fn``, and on a GPU where the GPU waited (``gpu_gaps``: idle time by
    the host phase of ``phases`` that issued the next work; ``KEEP_TRACE=1`` keeps the trace as
    ``<name>_trace.json.gz``)."""
    import gzip
    import shutil

    import torch
    from torch.profiler import ProfilerActivity, profile

    from gpu_gaps import format_gaps, gaps_by_phase, phase_ranges

    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    by_shape = os.environ.get("PROFILE_SHAPES", "0") == "1"
    with phase_ranges(phases), profile(activities=acts, record_shapes=by_shape) as prof:
        for _ in range(steps):
            with torch.profiler.record_function(name):
                fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    text = (f"wall {wall * 1e3:.1f} ms per step without the profiler; the table covers {steps} steps\n"
            + prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))
    if os.environ.get("PROFILE_HOST", "0") == "1":  # where the host's time goes (phases and the ops under them)
        text += "\nby host time\n" + prof.key_averages().table(sort_by="cpu_time_total", row_limit=40,
                                                                max_name_column_width=60)
    if by_shape:  # which tensors the elementwise ops and copies run on (the names alone do not say)
        text += "\nby input shape\n" + prof.key_averages(group_by_input_shape=True).table(
            sort_by=key, row_limit=40, max_name_column_width=40, max_shapes_column_width=90)
    from common import RESULTS

    os.makedirs(RESULTS, exist_ok=True)
    trace = os.path.join(RESULTS, f"{name}_trace.json")
    prof.export_chrome_trace(trace)
    with open(trace) as f:
        gaps = format_gaps(gaps_by_phase(json.load(f)), steps)
    if os.environ.get("KEEP_TRACE"):  # off by default: the device tool returns a limited number of files
        with open(trace, "rb") as f, gzip.open(trace + ".gz", "wb") as g:
            shutil.copyfileobj(f, g)
    os.remove(trace)
    return text + "\n" + gaps


def parse_variants(text: str) -> list[tuple[str, list[str]]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, args = part.partition(":")
        out.append((name, [a for a in args.split(",") if a]))
    return out or [("default", [])]


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, family in zip(axes, ("gpt", "bert")):
        lines: dict[tuple, list] = {}
        for r in rows:
            if (family in r["preset"]) and r.get("tokens_per_s"):
                lines.setdefault((r["preset"], r["mode"]), []).append((r["seq_len"], r["tokens_per_s"]))
        for (preset, mode), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] / 1e3 for p in pts], "o-" if mode.startswith("trainer") else "x--",
                    label=f"{preset} ({mode})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("training tokens/s (K)")
        ax.set_title(f"{family.upper()}-style, one GPU, through m2dist train vs bare loop")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


JOB_ENV = "_TRAIN_BENCH_JOB"  # set for the child process that runs one measurement (``measure``)


def measure(spec: dict) -> dict:
    """One (row, mode) measurement, in this process: the row's fields (or its error) and the profile table."""
    import torch

    from m2dist.models import flops_per_token
    from m2dist.train.metrics import device_peak_flops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = device_peak_flops(str(device) + (":0" if device.type == "cuda" else ""))
    mode, length = spec["mode"], spec["seq_len"]
    cfg = row_config(spec["preset"], length, spec["data"], spec["tok"], spec["run_dir"], spec["overrides"])
    fpt = flops_per_token(cfg.model, length)
    row = dict(tokens_per_step=cfg.trainer.global_batch_size * length, fwd_gflops_per_token=round(fpt / 1e9, 4))
    try:
        if mode.startswith("bare"):
            out = run_bare(cfg, device, spec["profile"])
            row.update(summarize(out["times"], out["losses"], out["mem"], cfg, fpt, peak))
        else:
            out = run_trainer(cfg, spec["profile"])
            rec = out["records"]
            row.update(summarize([r["step_time_s"] for r in rec], [r["loss"] for r in rec],
                                 max(r["mem_gib"] for r in rec), cfg, fpt, peak))
            row["precision"] = cfg.deepspeed.precision
            row["zero_stage"] = cfg.deepspeed.zero_stage
            row["ds_config_keys"] = sorted(out["ds_config"])
        row["profile"] = out.get("profile")
    except Exception as exc:  # one failing row (e.g. out of memory) must not lose the others
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return row


def main() -> int:
    from common import RESULTS, env_info, save

    rows_spec = [r.split("@") for r in os.environ.get("ROWS", DEFAULT_ROWS).split(",") if r]
    data = os.path.abspath(os.environ.get("DATA", os.path.join(ROOT, ".bench_data")))
    tok = prepare_data(data, [int(n) for _, n in rows_spec])
    if os.environ.get("PREP_ONLY"):
        return 0
    modes = os.environ.get("MODES", "trainer,bare").split(",")
    variants = parse_variants(os.environ.get("VARIANTS", ""))
    extra = [a for a in os.environ.get("TRAINER_ARGS", "").split() if a]
    budget = float(os.environ.get("BUDGET_S", "1e9"))
    profile_steps = env_int("PROFILE", 0)
    os.environ.setdefault("M2DIST_LOG_LEVEL", "warning")

    start, results, profiles = time.time(), [], {}
    scratch = tempfile.mkdtemp(prefix="train_bench_")
    for i, (preset, length) in enumerate(rows_spec):
        length = int(length)
        jobs = [(f"trainer:{name}" if len(variants) > 1 else "trainer", extra + args) for name, args in variants
                ] if "trainer" in modes else []
        if "bare" in modes:
            # One bare run per distinct set of model/trainer overrides (DeepSpeed keys do not apply to it).
            seen = []
            for name, args in variants:
                own = [a for a in extra + args if not a.startswith("deepspeed.")]
                if own not in seen:
                    seen.append(own)
                    jobs.append(("bare" if not own else f"bare:{name}", own))
        for mode, args in jobs:
            row = dict(preset=preset, seq_len=length, mode=mode, overrides=args)
            if time.time() - start > budget:
                row["skipped"] = "BUDGET_S"
                results.append(row)
                print(json.dumps(row), flush=True)
                continue
            tag = f"{i}_{mode.replace(':', '_')}"
            spec = dict(preset=preset, seq_len=length, mode=mode, overrides=args, data=data, tok=tok,
                        run_dir=os.path.join(scratch, tag), profile=profile_steps if i == 0 else 0,
                        result=os.path.join(scratch, tag + ".json"))
            # Each measurement in its own process: what one leaves on the device (a CUDA graph's private pool, a
            # cache DeepSpeed keeps) would otherwise count in the next one's peak memory, or exhaust it.
            proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env={**os.environ, JOB_ENV: json.dumps(spec)})
            if os.path.exists(spec["result"]):
                with open(spec["result"]) as f:
                    out = json.load(f)
                if out.get("profile"):
                    profiles[f"{preset}@{length} {mode}"] = out["profile"]
                row.update({k: v for k, v in out.items() if k != "profile"})
            else:
                row["error"] = f"the measuring process exited with {proc.returncode} and no result"
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("losses", "interval_step_ms")}), flush=True)
    compare(results)
    name = os.environ.get("RESULT_NAME", "train_bench.json")
    save(name, dict(env=env_info(), tokens_per_step=env_int("TOKENS", 32768), warmup=env_int("WARMUP", 5),
                    steps=env_int("STEPS", 15), rows=results, profiles=profiles))
    for title, text in profiles.items():
        print(f"\n== profile: {title}\n{text}")
    plot(results, os.path.join(RESULTS, name.replace(".json", ".png")))
    table(results)
    return 0


def compare(rows: list[dict]) -> None:
    """Per row: the trainer's speed and memory against the bare loop's, and how far its losses stray."""
    def key(r):
        return r["preset"], r["seq_len"], tuple(a for a in r["overrides"] if not a.startswith("deepspeed."))

    bare = {key(r): r for r in rows if r["mode"].startswith("bare") and "tokens_per_s" in r}
    for r in rows:
        ref = bare.get(key(r))
        if r["mode"].startswith("bare") or ref is None or "tokens_per_s" not in r:
            continue
        r["vs_bare_tokens_per_s"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 3)
        r["vs_bare_peak_mem"] = round(r["peak_mem_gib"] / ref["peak_mem_gib"], 3)
        diffs = [abs(a - b) / abs(b) for a, b in zip(r["losses"], ref["losses"])]
        r["loss_max_rel_diff_vs_bare"] = round(max(diffs), 5) if diffs else None


def table(rows: list[dict]) -> None:
    print("\n| model | L | path | tokens/s | MFU | peak GiB | step ms | vs bare tok/s | vs bare mem | loss Δ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"| {r['preset']} | {r['seq_len']} | {r['mode']} | {r.get('error') or r.get('skipped')} |||||||")
            continue
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {r['preset']} | {r['seq_len']} | {r['mode']} | {r['tokens_per_s']:,} | {mfu} | "
              f"{r['peak_mem_gib']} | {r['step_ms']} | {r.get('vs_bare_tokens_per_s', '')} | "
              f"{r.get('vs_bare_peak_mem', '')} | {r.get('loss_max_rel_diff_vs_bare', '')} |")


def job_main() -> int:
    spec = json.loads(os.environ[JOB_ENV])
    row = measure(spec)
    with open(spec["result"], "w") as f:
        json.dump(row, f)
    return 0


if __name__ == "__main__":
    sys.exit(job_main() if JOB_ENV in os.environ else main())
