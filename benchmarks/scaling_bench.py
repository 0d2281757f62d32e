"""Multi-GPU scaling of what users run (issue 17): each row launches the real trainer under torchrun, as a user would,

    torchrun --standalone --nproc_per_node=N -m m2dist train --config configs/<preset>.yaml <overrides>

with NVLink multicast off for every launch (``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``: the
lent machines' docs say NVLS hangs there), and reads the run's ``metrics.jsonl``.

Row kinds (``ROWS``: comma list of ``preset@L[:token.token...]``):

* training rows, e.g. ``m2-gpt-360m@2048`` (one GPU), ``m2-gpt-360m@2048:dp2.z3`` (DP=2, ZeRO-3),
  ``m2-gpt-360m@2048:tp2``, ``m2-gpt-360m@32768:cp2``; tokens ``tpN``, ``cpN``, ``dpN`` give the layout (N GPUs =
  TP x CP x DP), ``zS`` the ZeRO stage (default: the config's). Each replica (the TP x CP ranks of one data rank)
  gets ``TOKENS // L`` samples per step in one micro-batch, so DP rows are weak scaling (the per-GPU work of the
  one-GPU row) and TP/CP rows strong scaling (one GPU's batch shared by TP x CP GPUs). Recorded: the median of the
  logged interval speeds after the first (the warm-up) interval, ``tokens_per_s_per_gpu``, and rank 0's peak memory
  (``mem_gib``: allocated device memory on GPU, resident set size on CPU). Against the one-GPU row of the same
  preset and L: ``scaling_efficiency`` = tokens/s / (N x the one-GPU tokens/s); the goal is >= 0.9.
* ``comm.tpN``: the tensor-parallel collectives of one layer at the row's activation shape (``TOKENS // L``
  samples x L x hidden, bf16 on GPU, fp32 on CPU), timed through ``m2dist.parallel.mappings`` on N processes (NCCL
  on GPU, gloo on CPU): the mixer's all-reduce after out_proj (``reduce_from_tp``) and the Monarch GLU's
  all-gather of its output (``gather_last_dim``). Each layer runs both once forward and once more backward on the
  same shapes (m2dist/parallel/plan.py's table), so with the ``tpN`` row of the same preset@L the row also gives
  the step's estimated collective time, 2 x layers x (all-reduce + all-gather), and its share of the step.
* ``resume.dpN`` (or any layout): the layout trains to step k (``RESUME_STEPS``) with checkpoints, one GPU resumes
  to 2k, the layout resumes again to 3k; each resume must log ``resumed from ... at step s (resharded: ...)``, and
  the losses of steps 1..3k are compared with one uninterrupted run of the layout to 3k (``RESUME_RTOL``, default
  0.02 relative: bf16 autocast at different data-parallel sizes sums gradients in other orders). The schedule is
  constant after a warm-up longer than the chain, so the rate changes every step and does not depend on
  ``trainer.max_steps`` (which ends each segment).

Data: the prepared MDS of ``benchmarks/train_bench.py`` (``DATA``, default ``.bench_data``; made by its
``prepare_data`` when a length is missing); vocabulary the paper's sizes (``VOCAB`` overrides).

Knobs (environment): ``ROWS``, ``TOKENS`` (per replica and step, 32768), ``STEPS`` (timed steps, 10), ``WARMUP``
(5; also the logging interval), ``RESUME_STEPS`` (k, 4), ``RESUME_RTOL``, ``COMM_REPS`` (20), ``GPUS`` (processes
at most; default ``torch.cuda.device_count()``, 2 on CPU), ``BUDGET_S`` (start no row after this many seconds),
``ROW_TIMEOUT_S`` (per launch, 300), ``TRAINER_ARGS`` (overrides added to every launch), ``RESULT_NAME``
(``scaling_bench.json``, rewritten after every row so that a cut-off call keeps what it did; the plot takes its
name with ``.png``), ``PREP_ONLY=1`` (prepare the data, stop), ``KEEP_RUNS=1`` (keep the run folders and
checkpoints), ``CPU_TEST=1`` (defaults for a CPU smoke run: the tiny M2-GPT, 2 gloo processes, a few steps).

    python3 benchmarks/scaling_bench.py                                  # every default row (~15 min on 2 H200s)
    ROWS=m2-gpt-360m@2048,m2-gpt-360m@2048:dp2.z1 python3 benchmarks/scaling_bench.py
    python3 benchmarks/scaling_bench.py merge a.json b.json              # one result (and plot) from split runs
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# NVLink multicast (NVLS) off for every launch: the device docs of the lent H200 machines require it.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
GOAL = 0.9  # issue 17: tokens/s per GPU at >= 90% of one GPU's

M2, GPT = "m2-gpt-360m", "gpt-360m"


def default_rows(gpus: int) -> list[str]:
    """Both models on one GPU and at DP=2 (ZeRO 1, 2, 3), DP=4 and 8 (ZeRO 1) where the machine has the GPUs, TP=2,
    the TP collectives, CP=2 at 32K (M2 only: context parallelism refuses the Transformer baselines), the resume."""
    wide = [f"{p}@2048:dp{n}.z1" for n in (4, 8) if n <= gpus for p in (M2, GPT)]
    return [f"{M2}@2048", f"{GPT}@2048", *[f"{p}@2048:dp2.z{z}" for p in (M2, GPT) for z in (1, 2, 3)], *wide,
            f"{M2}@2048:tp2", f"{GPT}@2048:tp2", f"{M2}@2048:comm.tp2", f"{M2}@32768", f"{M2}@32768:cp2",
            f"{M2}@2048:resume.dp2"]


# CPU_TEST=1: the tiny M2-GPT on 2 gloo processes, every row kind once.
CPU_TEST_ENV = dict(
    ROWS=",".join(f"m2-gpt-tiny@128{s}" for s in ("", ":dp2.z1", ":tp2", ":cp2", ":comm.tp2", ":resume.dp2.z1")),
    TOKENS="512", STEPS="4", WARMUP="2", RESUME_STEPS="2", COMM_REPS="5", VOCAB="512", GPUS="2",
    BENCH_CORPUS_CHARS="400000", BENCH_TOKENIZER_PIECES="512")


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# ------------------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class Row:
    spec: str
    preset: str
    seq_len: int
    kind: str = "train"  # "train" | "comm" | "resume"
    tp: int = 1
    cp: int = 1
    dp: int = 1
    zero: int | None = None  # None: the config's stage

    @property
    def nproc(self) -> int:
        return self.tp * self.cp * self.dp

    @property
    def layout(self) -> str:
        z = "" if self.zero is None else f" z{self.zero}"
        return f"tp{self.tp} cp{self.cp} dp{self.dp}{z}"


def parse_row(spec: str) -> Row:
    head, _, tail = spec.partition(":")
    preset, _, length = head.partition("@")
    fields: dict = {}
    for token in filter(None, tail.split(".")):
        if token in ("comm", "resume"):
            fields["kind"] = token
            continue
        m = re.fullmatch(r"(tp|cp|dp|z)(\d+)", token)
        if not m:
            raise ValueError(f"ROWS: {spec!r}: unknown token {token!r} (tpN, cpN, dpN, zS, comm, resume)")
        fields["zero" if m[1] == "z" else m[1]] = int(m[2])
    return Row(spec=spec, preset=preset, seq_len=int(length), **fields)


def config_path(preset: str) -> str:
    path = os.path.join(ROOT, "configs", f"{preset}.yaml")
    return path if os.path.exists(path) else os.path.join(ROOT, "configs", "smoke", f"{preset}.yaml")


def replica_batch(seq_len: int) -> int:
    return max(1, env_int("TOKENS", 32768) // seq_len)


def train_overrides(row: Row, data: str, tok: str, run_dir: str, steps: int, log_every: int,
                    layout: tuple[int, int, int] | None = None) -> list[str]:
    """The command-line overrides of one launch; ``layout`` (tp, cp, dp) replaces the row's (resume segments).
    The global batch is always the row's (the data order of a resumed run is defined per global batch)."""
    from train_bench import VOCAB

    tp, cp, _ = layout or (row.tp, row.cp, row.dp)  # the data-parallel size is what the world leaves
    kind = "mlm" if "bert" in row.preset else "causal_lm"
    batch = replica_batch(row.seq_len)
    out = [f"model.max_seq_len={row.seq_len}", f"model.vocab_size={env_int('VOCAB', VOCAB[kind])}",
           f"data.kind={kind}", f"data.path={data}/L{row.seq_len}", f"data.tokenizer={tok}",
           f"trainer.global_batch_size={batch * row.dp}", f"trainer.micro_batch_size={batch}",
           f"trainer.max_steps={steps}", "trainer.eval_every=0", f"trainer.run_dir={run_dir}",
           f"checkpoint.dir={run_dir}/checkpoints", f"logging.every={log_every}", "logging.tensorboard=false",
           f"parallel.tensor={tp}", f"parallel.context={cp}"]
    if row.zero is not None:
        out.append(f"deepspeed.zero_stage={row.zero}")
    return out + [a for a in os.environ.get("TRAINER_ARGS", "").split() if a]


# ------------------------------------------------------------------------------------------------------ launches
def launch_env() -> dict:
    import torch

    env = dict(os.environ, PYTHONUNBUFFERED="1", **NCCL_ENV)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", "1")  # one core per process, as one GPU per process
    return env


def torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def shown(cmd: list[str]) -> str:
    """The launch as a user types it (``torchrun`` for ``python -m torch.distributed.run``), with the NCCL env."""
    text = shlex.join(cmd[3:]).replace(ROOT + os.sep, "")
    return " ".join(f"{k}={v}" for k, v in NCCL_ENV.items()) + " torchrun " + text


def run_launch(cmd: list[str], log_path: str) -> tuple[int, float, str]:
    """Run one launch, output to ``log_path``; (exit code, wall seconds, the log). A launch past ``ROW_TIMEOUT_S``
    is stopped (SIGTERM to torchrun, which stops its workers; SIGKILL 60 s later) and reads as exit code 124."""
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=env_int("ROW_TIMEOUT_S", 300))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = 124
    with open(log_path) as f:
        return code, round(time.time() - t0, 1), f.read()


def train_records(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if "tokens_per_s" in r]


def failure(code: int, log: str) -> str:
    lines = [ln for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln]
    return f"exit {code}: " + " | ".join((errors[-3:] or lines[-3:]))[-600:]


def run_train_row(row: Row, data: str, tok: str, run_dir: str) -> dict:
    warmup = env_int("WARMUP", 5)
    overrides = train_overrides(row, data, tok, run_dir, warmup + env_int("STEPS", 10), warmup) + [
        "trainer.resume=none", "checkpoint.every=0"]  # a final save only (the trainer always makes one)
    cmd = torchrun(row.nproc, ["-m", "m2dist", "train", "--config", config_path(row.preset), *overrides])
    code, wall, log = run_launch(cmd, run_dir + ".log")
    out = dict(command=shown(cmd), wall_s=wall)
    records = train_records(run_dir)
    if code != 0 or not records:
        return dict(out, error=failure(code, log))
    timed = records[1:] or records  # the first interval holds the warm-up (compiles, autotune, allocator)
    tok_s = statistics.median(r["tokens_per_s"] for r in timed)
    return dict(out, tokens_per_s=round(tok_s, 1), tokens_per_s_per_gpu=round(tok_s / row.nproc, 1),
                step_ms=round(1e3 * statistics.median(r["step_time_s"] for r in timed), 2),
                peak_mem_gib=round(max(r["mem_gib"] for r in records), 3),
                losses=[round(r["loss"], 5) for r in records], logged_steps=[r["step"] for r in records])


def resharded(log: str, step: int) -> str | None:
    """The trainer's 'resumed from ... at step N (resharded: ...)' line, or None."""
    for line in log.splitlines():
        if f"at step {step} (resharded: " in line:
            return line[line.index("resumed from"):] if "resumed from" in line else line
    return None


def layout_change(a: tuple[int, int, int], b: tuple[int, int, int]) -> str:
    """The reasons the trainer logs for a change from layout ``a`` to ``b`` (m2dist/checkpoint/layout.py)."""
    names = ("tensor parallel", "context parallel", "data parallel")
    return ", ".join(f"{n} {x} -> {y}" for n, x, y in zip(names, a, b) if x != y)


def run_resume_row(row: Row, data: str, tok: str, base: str) -> dict:
    k = env_int("RESUME_STEPS", 4)
    rtol = float(os.environ.get("RESUME_RTOL", "0.02"))
    # Constant after a warm-up longer than the chain: the rate changes every step and ignores trainer.max_steps.
    common = ["schedule.decay=constant", f"schedule.warmup_steps={3 * k + 2}"]
    config = config_path(row.preset)
    here, one = (row.tp, row.cp, row.dp), (1, 1, 1)
    chain, ref = os.path.join(base, "chain"), os.path.join(base, "uninterrupted")
    os.makedirs(base, exist_ok=True)
    segments, out = [], dict(resume_steps=k, rtol=rtol)
    for i, layout in enumerate((here, one, here)):
        end = k * (i + 1)
        overrides = train_overrides(row, data, tok, chain, end, 1, layout) + common + [
            f"checkpoint.every={k}", f"trainer.resume={'auto' if i else 'none'}"]
        cmd = torchrun(layout[0] * layout[1] * layout[2], ["-m", "m2dist", "train", "--config", config, *overrides])
        code, wall, log = run_launch(cmd, f"{chain}_{i}.log")
        seg = dict(layout="tp{} cp{} dp{}".format(*layout), end_step=end, wall_s=wall, command=shown(cmd))
        if i:
            line = resharded(log, end - k)
            expected = layout_change((here, one, here)[i - 1], layout)
            seg.update(resumed=line, expected_reshard=expected,
                       reshard_logged=bool(line) and f"(resharded: {expected})" in line)
        segments.append(seg)
        if code != 0:
            return dict(out, segments=segments, error=failure(code, log))
    overrides = train_overrides(row, data, tok, ref, 3 * k, 1) + common + ["checkpoint.every=0", "trainer.resume=none"]
    cmd = torchrun(row.nproc, ["-m", "m2dist", "train", "--config", config, *overrides])
    code, wall, log = run_launch(cmd, ref + ".log")
    out.update(segments=segments, uninterrupted=dict(command=shown(cmd), wall_s=wall))
    if code != 0:
        return dict(out, error=failure(code, log))
    got = {r["step"]: r["loss"] for r in train_records(chain)}
    want = {r["step"]: r["loss"] for r in train_records(ref)}
    steps = list(range(1, 3 * k + 1))
    if sorted(got) != steps or sorted(want) != steps:
        return dict(out, error=f"logged steps {sorted(got)} (chain), {sorted(want)} (uninterrupted); want {steps}")
    diff = max(abs(got[s] - want[s]) / abs(want[s]) for s in steps)
    return dict(out, losses=[got[s] for s in steps], uninterrupted_losses=[want[s] for s in steps],
                loss_max_rel_diff=diff, losses_within_rtol=diff <= rtol,
                reshard_logged=all(s.get("reshard_logged") for s in segments[1:]))


def run_comm_row(row: Row, run_dir: str) -> dict:
    os.makedirs(run_dir, exist_ok=True)
    result = os.path.join(run_dir, "comm.json")
    cmd = torchrun(row.nproc, [os.path.abspath(__file__), "tp-comm", "--out", result, "--preset", row.preset,
                               "--seq-len", str(row.seq_len), "--batch", str(replica_batch(row.seq_len)),
                               "--tp", str(row.tp), "--reps", str(env_int("COMM_REPS", 20))])
    code, wall, log = run_launch(cmd, run_dir + ".log")
    out = dict(command=shown(cmd), wall_s=wall)
    if code != 0 or not os.path.exists(result):
        return dict(out, error=failure(code, log))
    with open(result) as f:
        return dict(out, **json.load(f))


# ------------------------------------------------------------------------------------------------------ TP collectives
def tp_comm_worker(argv: list[str]) -> int:
    """One rank of the ``comm`` row, under torchrun (see the module docstring)."""
    import argparse

    import torch
    import torch.distributed as dist

    p = argparse.ArgumentParser()
    for name in ("--out", "--preset"):
        p.add_argument(name, required=True)
    for name in ("--seq-len", "--batch", "--tp", "--reps"):
        p.add_argument(name, type=int, required=True)
    a = p.parse_args(argv)

    from m2dist.config import load_config
    from m2dist.parallel import destroy_groups, init_groups, mappings

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    init_groups(a.tp)  # megatron's TP groups (apply the CPU patch on a host without a GPU)
    k, rank = mappings.tp_size(), mappings.tp_rank()
    model = load_config(config_path(a.preset), [f"model.max_seq_len={a.seq_len}"]).model
    hidden, device = model.hidden_size, torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32  # the activations' dtype under the trainer's autocast

    # What the mappings compute, once, before timing them.
    summed = mappings.reduce_from_tp(torch.full((4, 8), float(rank + 1), device=device, dtype=dtype))
    gathered = mappings.gather_last_dim(torch.full((4, 8), float(rank), device=device, dtype=dtype))
    ok = bool((summed == k * (k + 1) / 2).all()) and bool(
        (gathered.view(4, k, 8) == torch.arange(k, device=device, dtype=dtype)[None, :, None]).all())

    shape = (a.batch, a.seq_len, hidden)
    # Small values: the all-reduce works in place, so they grow k-fold per call without overflowing.
    full = torch.randn(shape, device=device, dtype=dtype) * 1e-3
    part = torch.randn((a.batch, a.seq_len, hidden // k), device=device, dtype=dtype)
    ops = {"mixer_all_reduce": (lambda: mappings.reduce_from_tp(full), 2 * (k - 1) / k),
           "mlp_all_gather": (lambda: mappings.gather_last_dim(part), (k - 1) / k)}
    nbytes = full.numel() * full.element_size()  # the all-reduce's tensor and the all-gather's output
    timings = {}
    with torch.no_grad():
        for name, (fn, bus_factor) in ops.items():
            for _ in range(3):
                fn()
            if cuda:
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(a.reps):
                fn()
            if cuda:
                torch.cuda.synchronize()
            t = torch.tensor([(time.perf_counter() - t0) / a.reps], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest rank's mean
            sec = float(t)
            timings[name] = dict(ms=round(sec * 1e3, 4), algbw_GBps=round(nbytes / sec / 1e9, 3),
                                 busbw_GBps=round(nbytes * bus_factor / sec / 1e9, 3))
    if dist.get_rank() == 0:
        with open(a.out, "w") as f:
            json.dump(dict(backend=dist.get_backend(), dtype=str(dtype).replace("torch.", ""), shape=list(shape),
                           bytes=nbytes, num_layers=model.num_layers, mappings_check_ok=ok, reps=a.reps, **timings),
                      f)
    destroy_groups()
    dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------------------------ results
def finalize(rows: list[dict]) -> list[dict]:
    """Derived columns, from the rows alone (so that merged result files get them too)."""
    def key(r):
        return r["preset"], r["seq_len"]

    base = {key(r): r for r in rows if r["kind"] == "train" and r["nproc"] == 1 and r.get("tokens_per_s")}
    for r in rows:
        b = base.get(key(r))
        if r["kind"] != "train" or not r.get("tokens_per_s") or b is None:
            continue
        r["speedup_vs_1gpu"] = round(r["tokens_per_s"] / b["tokens_per_s"], 4)
        r["scaling_efficiency"] = round(r["tokens_per_s"] / (r["nproc"] * b["tokens_per_s"]), 4)
        r["mem_vs_1gpu"] = round(r["peak_mem_gib"] / b["peak_mem_gib"], 4)
        r["meets_goal"] = r["scaling_efficiency"] >= GOAL if r["nproc"] > 1 else None
    for r in rows:
        if r["kind"] != "comm" or "mixer_all_reduce" not in r:
            continue
        tp_row = next((t for t in rows if t["kind"] == "train" and key(t) == key(r) and t["tp"] == r["tp"]
                       and t["cp"] == 1 and t.get("step_ms")), None)
        # Forward and backward: each layer's all-reduce and all-gather twice (m2dist/parallel/plan.py's table).
        step_ms = 2 * r["num_layers"] * (r["mixer_all_reduce"]["ms"] + r["mlp_all_gather"]["ms"])
        r["collectives_ms_per_step"] = round(step_ms, 3)
        if tp_row:
            r["collectives_share_of_tp_step"] = round(step_ms / tp_row["step_ms"], 4)
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["kind"] == "train" and r.get("tokens_per_s")]
    multi = [r for r in train if r["nproc"] > 1 and r.get("scaling_efficiency") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))

    def label(r):
        return f"{r['preset']}@{r['seq_len']}\n{r['layout']}"

    ax = axes[0]
    ax.bar(range(len(multi)), [100 * r["scaling_efficiency"] for r in multi],
           color=["tab:green" if r["meets_goal"] else "tab:red" for r in multi])
    ax.axhline(100 * GOAL, color="k", ls="--", lw=1, label=f"goal {100 * GOAL:.0f}%")
    ax.set_xticks(range(len(multi)), [label(r) for r in multi], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("tokens/s per GPU, % of one GPU's")
    ax.set_title("scaling efficiency (DP: weak; TP, CP: strong)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(range(len(train)), [r["peak_mem_gib"] for r in train], color="tab:blue")
    ax.set_xticks(range(len(train)), [label(r) for r in train], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("peak memory per GPU (GiB, rank 0)")
    ax.set_title("memory per GPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def table(rows: list[dict]) -> None:
    print("\n| model | L | GPUs | layout | tokens/s | tokens/s/GPU | efficiency | peak GiB/GPU | step ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] != "train":
            continue
        if not r.get("tokens_per_s"):
            print(f"| {r['preset']} | {r['seq_len']} | {r['nproc']} | {r['layout']} | "
                  f"{r.get('error') or r.get('skipped')} |||||")
            continue
        eff = "" if r.get("scaling_efficiency") is None else f"{100 * r['scaling_efficiency']:.1f}%"
        print(f"| {r['preset']} | {r['seq_len']} | {r['nproc']} | {r['layout']} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s_per_gpu']:,.0f} | {eff} | {r['peak_mem_gib']} | {r['step_ms']} |")
    for r in rows:
        if r["kind"] == "comm":
            if "mixer_all_reduce" not in r:
                print(f"\nTP collectives {r['spec']}: {r.get('error') or r.get('skipped')}")
                continue
            share = r.get("collectives_share_of_tp_step")
            print(f"\nTP collectives, {r['preset']}@{r['seq_len']} TP={r['tp']} ({r['backend']}, {r['dtype']}, "
                  f"{r['shape']}, {r['bytes'] / 2**20:.1f} MiB): mixer all-reduce {r['mixer_all_reduce']['ms']} ms "
                  f"(bus {r['mixer_all_reduce']['busbw_GBps']} GB/s), GLU all-gather {r['mlp_all_gather']['ms']} ms "
                  f"(bus {r['mlp_all_gather']['busbw_GBps']} GB/s); {r['collectives_ms_per_step']} ms per step"
                  + ("" if share is None else f" = {100 * share:.1f}% of the TP step"))
        if r["kind"] == "resume":
            if "loss_max_rel_diff" not in r:
                print(f"\nresume {r['spec']}: {r.get('error') or r.get('skipped')}")
                continue
            logged = "; ".join(f"{s['layout']} at step {s['end_step'] - r['resume_steps']}: "
                               f"{'logged' if s['reshard_logged'] else 'NOT logged'} ({s['expected_reshard']})"
                               for s in r["segments"][1:])
            print(f"\nresume {r['spec']} (k={r['resume_steps']}): reshards {logged}; losses vs uninterrupted: max "
                  f"relative difference {r['loss_max_rel_diff']:.2e} (tolerance {r['rtol']})")


def result_name() -> str:
    return os.environ.get("RESULT_NAME", "scaling_bench.json")


def write(payload: dict) -> None:
    from common import RESULTS, save

    name = result_name()
    payload["rows"] = finalize(payload["rows"])
    save(name, payload)
    plot(payload["rows"], os.path.join(RESULTS, name.replace(".json", ".png")))
    table(payload["rows"])


def merge(paths: list[str]) -> int:
    """One result from several (a full run split over device calls): rows in order, derived columns redone."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    write(dict(merged_from=[os.path.basename(p) for p in paths], env=[p["env"] for p in parts],
               knobs=[p["knobs"] for p in parts], gpus=max(p["gpus"] for p in parts), nccl_env=parts[0]["nccl_env"],
               scaling=parts[0]["scaling"], rows=[r for p in parts for r in p["rows"]]))
    return 0


def main() -> int:
    if os.environ.get("CPU_TEST"):
        for key, value in CPU_TEST_ENV.items():
            os.environ.setdefault(key, value)  # before train_bench is imported: it reads BENCH_* then
    import torch

    from common import env_info, save
    from train_bench import prepare_data

    gpus = env_int("GPUS", torch.cuda.device_count() if torch.cuda.is_available() else 2)
    rows = [parse_row(s) for s in os.environ.get("ROWS", ",".join(default_rows(gpus))).split(",") if s]
    data = os.path.abspath(os.environ.get("DATA", os.path.join(ROOT, ".bench_data")))
    tok = prepare_data(data, sorted({r.seq_len for r in rows if r.kind != "comm"}))
    if os.environ.get("PREP_ONLY"):
        return 0
    budget = float(os.environ.get("BUDGET_S", "1e9"))
    knobs = {k: os.environ.get(k) for k in ("ROWS", "TOKENS", "STEPS", "WARMUP", "RESUME_STEPS", "RESUME_RTOL",
                                            "COMM_REPS", "GPUS", "TRAINER_ARGS", "VOCAB", "CPU_TEST")}
    payload = dict(env=env_info(), knobs=knobs, gpus=gpus, nccl_env=NCCL_ENV,
                   scaling="per replica (the TP x CP ranks of a data rank) TOKENS // L samples per step: DP rows "
                           "weak scaling, TP and CP rows strong; efficiency = tokens/s / (GPUs x one GPU's tokens/s)")
    scratch = tempfile.mkdtemp(prefix="scaling_bench_")
    start, results = time.time(), []
    for i, row in enumerate(rows):
        res = dict(spec=row.spec, kind=row.kind, preset=row.preset, seq_len=row.seq_len, nproc=row.nproc,
                   tp=row.tp, cp=row.cp, dp=row.dp, zero_stage=row.zero, layout=row.layout)
        run_dir = os.path.join(scratch, f"{i}_{re.sub(r'[^A-Za-z0-9.-]', '_', row.spec)}")
        if row.nproc > gpus:
            res["skipped"] = f"needs {row.nproc} processes (GPUS={gpus})"
        elif time.time() - start > budget:
            res["skipped"] = "BUDGET_S"
        else:
            try:
                if row.kind == "train":
                    from m2dist.config import load_config

                    # The config as the launch will read it: a refusal (e.g. CP of a Transformer) costs no launch.
                    cfg = load_config(config_path(row.preset), train_overrides(row, data, tok, run_dir, 1, 1))
                    res.update(zero_stage=cfg.deepspeed.zero_stage, global_batch_size=cfg.trainer.global_batch_size,
                               micro_batch_size=cfg.trainer.micro_batch_size,
                               tokens_per_step=cfg.trainer.global_batch_size * row.seq_len)
                    res.update(run_train_row(row, data, tok, run_dir))
                elif row.kind == "resume":
                    res.update(run_resume_row(row, data, tok, run_dir))
                else:
                    res.update(run_comm_row(row, run_dir))
            except Exception as exc:  # one failing row must not lose the others
                res["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            if not os.environ.get("KEEP_RUNS"):
                shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints: 5+ GiB per 360M run
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if "losses" not in k and k != "segments"}), flush=True)
        save(result_name(), dict(payload, rows=finalize(results)))  # what is done survives a cut-off device call
    if not os.environ.get("KEEP_RUNS"):
        shutil.rmtree(scratch, ignore_errors=True)
    write(dict(payload, rows=results))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["tp-comm"]:
        sys.exit(tp_comm_worker(sys.argv[2:]))
    if sys.argv[1:2] == ["merge"]:
        sys.exit(merge(sys.argv[2:]))
    sys.exit(main())
