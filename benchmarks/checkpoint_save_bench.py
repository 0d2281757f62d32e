"""The step-time cost of one checkpoint save, synchronous against asynchronous (``checkpoint.async_save``).

For each mode a child process builds the trainer exactly as ``m2dist train`` does (``Trainer(cfg)``: DeepSpeed engine,
streaming loader, checkpoint manager), runs ``--warmup`` steps, then ``--steps`` timed steps (the device synchronised
after each), saving once after timed step ``--save-at``. It records every step's wall time, how long the save call
blocked the loop, and, for the asynchronous save, when the background write was committed. The cost of the save is

    cost = (blocking time of the save call) + sum over the steps after it of (step time - median step time)

i.e. the training time lost to it (the second term is what the background write takes from the steps it overlaps).
A background write still running after the last timed step is waited for and reported (``write_s``), not counted
as step time. Results: ``$OUT/checkpoint_save_bench.json`` (default ``benchmarks/results/``), printed too.

On the H200, M2-GPT-360M (data as in the README's training section):

    python3 benchmarks/checkpoint_save_bench.py --config configs/m2-gpt-360m.yaml \\
        data.path=.gpu/pile data.tokenizer=.gpu/tok.model model.vocab_size=50304 \\
        trainer.global_batch_size=8 trainer.micro_batch_size=8

On CPU (the test): a tiny config, ``--warmup 1 --steps 4 --save-at 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)


def child(args) -> dict:
    import torch

    from m2dist.config import load_config
    from m2dist.train.trainer import Trainer

    ckpt_dir = tempfile.mkdtemp(prefix="m2dist-save-bench-", dir=args.ckpt_root)
    run_dir = tempfile.mkdtemp(prefix="m2dist-save-bench-run-", dir=args.ckpt_root)
    total = args.warmup + args.steps
    overrides = [*args.overrides, f"checkpoint.dir={ckpt_dir}", f"trainer.run_dir={run_dir}", "checkpoint.every=0",
                 f"checkpoint.async_save={'true' if args.child == 'async' else 'false'}", "trainer.resume=none",
                 f"trainer.max_steps={total}", "trainer.eval_every=0", "logging.every=0", "logging.tensorboard=false"]
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg)
    cuda = trainer.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(trainer.device)

    trainer._it = iter(trainer.train_loader)
    trainer.engine.train()
    for _ in range(args.warmup):
        trainer.train_step()
    sync()
    steps, save_block, write_done, t_save = [], None, None, None
    for i in range(args.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        sync()
        steps.append(time.perf_counter() - t0)
        if t_save is not None and write_done is None and not _in_flight(trainer):
            write_done = time.perf_counter() - t_save
        if i + 1 == args.save_at:
            t_save = time.perf_counter()
            trainer.save(blocking=args.child == "sync")
            sync()
            save_block = time.perf_counter() - t_save
            if not _in_flight(trainer):
                write_done = save_block
    trainer.ckpt.wait()
    if write_done is None:
        write_done = time.perf_counter() - t_save
    size = _dir_bytes(ckpt_dir)
    trainer.close()
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"mode": args.child, "step_s": steps, "save_after_step": args.save_at, "save_call_s": save_block,
            "write_s": write_done, "checkpoint_bytes": size, "device": str(trainer.device),
            "world_size": trainer.info.world_size}


def _in_flight(trainer) -> bool:
    pending = trainer.ckpt._pending
    return pending is not None and pending.is_alive()


def summarise(run: dict) -> dict:
    steps, k = run["step_s"], run["save_after_step"]
    before, after = steps[:k], steps[k:]
    baseline = statistics.median(before if len(before) >= 2 else steps)
    extra = sum(s - baseline for s in after)
    return {"mode": run["mode"], "median_step_s": baseline, "save_call_s": run["save_call_s"],
            "extra_step_s_after_save": extra, "cost_s": run["save_call_s"] + extra, "write_s": run["write_s"],
            "checkpoint_gib": run["checkpoint_bytes"] / 2**30, "device": run["device"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--save-at", type=int, default=5, help="save after this timed step")
    p.add_argument("--modes", default="sync,async")
    p.add_argument("--ckpt-root", default=None, help="where the temporary checkpoints go (default: TMPDIR)")
    p.add_argument("--out", default=os.environ.get("OUT", os.path.join(ROOT, "benchmarks", "results")))
    p.add_argument("--child", choices=["sync", "async"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = p.parse_args()
    if not 1 <= args.save_at < args.steps:
        p.error("--save-at must be in [1, --steps)")
    if args.child:
        result = child(args)
        with open(args.child_out, "w") as f:
            json.dump(result, f)
        return 0

    runs = []
    for mode in args.modes.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [sys.executable, os.path.abspath(__file__), "--config", args.config, "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--save-at", str(args.save_at), "--child", mode, "--child-out", out,
               *(["--ckpt-root", args.ckpt_root] if args.ckpt_root else []), *args.overrides]
        # One process per mode: a second trainer in one process would need the process groups torn down.
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode:
            print(f"checkpoint_save_bench: the {mode} run failed ({proc.returncode})", file=sys.stderr)
            return proc.returncode
        with open(out) as f:
            runs.append(json.load(f))
        os.remove(out)
    summary = [summarise(r) for r in runs]
    report = {"command": " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]), "config": args.config,
              "overrides": args.overrides, "summary": summary, "runs": runs}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "checkpoint_save_bench.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    for s in summary:
        print(f"{s['mode']:>5}: median step {s['median_step_s'] * 1e3:.1f} ms | save call {s['save_call_s']:.3f} s | "
              f"extra step time after it {s['extra_step_s_after_save']:.3f} s | cost {s['cost_s']:.3f} s | "
              f"write done after {s['write_s']:.3f} s | {s['checkpoint_gib']:.2f} GiB")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
