"""Helpers shared by the trainer and checkpoint tests: sample data prepared once, training runs as real
subprocesses (bare python or ``torchrun --nproc_per_node=2``), and readers for what a run writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def _source_hash() -> str:
    """Prepared data is cached by the code that makes it (data_prep/, m2dist/data/)."""
    h = hashlib.sha256()
    for folder in ("data_prep", "m2dist/data"):
        for path in sorted((REPO / folder).rglob("*.py")):
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _cli(*args) -> None:
    from m2dist.cli.main import main

    code = main([str(a) for a in args])
    assert code == 0, f"m2dist {' '.join(map(str, args))} exited {code}"


def prepare_sample_data(cache_root: Path) -> Path:
    """``m2dist prep sample`` + a 512-piece tokenizer + the Pile and ImageNet samples as MDS (cached)."""
    out = cache_root / f"m2dist-sample-{_source_hash()}"
    if (out / "DONE").exists():
        return out
    from data_prep.synthetic import private_streaming_tempdir

    tmp = Path(str(out) + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with private_streaming_tempdir():
        _cli("prep", "sample", "--output", tmp)
        _cli("tokenizer", "train", "--input", tmp / "pile/train", "--format", "pile", "--vocab-size", 512,
             "--output", tmp / "tok")
        for split, src in (("train", tmp / "pile/train"), ("val", tmp / "pile/val.jsonl.zst")):
            _cli("prep", "pile", "--input", src, "--split", split, "--output", tmp / "mds/pile", "--tokenizer",
                 tmp / "tok.model", "--seq-len", 128, "--workers", 1)
        for split in ("train", "val"):
            _cli("prep", "imagenet", "--input", tmp / "imagenet", "--split", split, "--output",
                 tmp / "mds/imagenet", "--workers", 1)
    (tmp / "DONE").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TMPDIR=str(tmp))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    return env


def train_command(config: str, overrides: list[str], nproc: int) -> list[str]:
    if nproc == 1:
        return [PY, "-m", "m2dist", "train", "--config", config, *overrides]
    return [PY, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
            "-m", "m2dist", "train", "--config", config, *overrides]


def run_train(config: str, overrides: list[str], nproc: int, tmp: Path, timeout: float = 240,
              extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """A training run to its end. Two or more ranks are started directly, with the environment torchrun would give
    them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT): the same multi-process job without the launcher's own
    process, which costs a torch import and a teardown per launch (~1-2 s on 2 cores, many launches a suite). The
    torchrun path itself is run by the tests that start jobs (``start_train``), the quickstart and Slurm."""
    env = base_env(tmp)
    env.update(extra_env or {})
    if nproc == 1:
        return subprocess.run(train_command(config, overrides, 1), cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)
    return _run_ranks(train_command(config, overrides, 1), nproc, env, timeout)


def _run_ranks(cmd: list[str], nproc: int, env: dict, timeout: float) -> subprocess.CompletedProcess:
    import tempfile

    port, procs, logs = free_port(), [], []
    for rank in range(nproc):
        rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                        LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        logs.append((out, err))
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=rank_env, stdout=out, stderr=err, text=True))
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p in procs):
            # As torchrun does: a failed rank takes the others down (they would wait in a collective for it).
            failed = any(p.returncode not in (None, 0) for p in procs)
            if failed or time.time() > deadline:
                end = time.time() + (5 if failed else 0)
                while time.time() < end and any(p.poll() is None for p in procs):
                    time.sleep(0.05)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                if not failed:
                    raise subprocess.TimeoutExpired(cmd, timeout)
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    texts = []
    for out, err in logs:
        out.seek(0), err.seek(0)
        texts.append((out.read(), err.read()))
        out.close(), err.close()
    code = next((p.returncode for p in procs if p.returncode != 0), 0)
    return subprocess.CompletedProcess(cmd, code, "".join(o for o, _ in texts), "".join(e for _, e in texts))


def start_train(config: str, overrides: list[str], nproc: int, tmp: Path, extra_env: dict | None = None,
                log: Path | None = None) -> subprocess.Popen:
    """Start a run in its own process group (so a test can kill the whole job)."""
    env = base_env(tmp)
    env.update(extra_env or {})
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(train_command(config, overrides, nproc), cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job_processes(proc: subprocess.Popen) -> list:
    """The launcher and every process below it (psutil.Process objects). torchrun starts each worker in a session
    of its own (setsid), so the launcher's process group does not hold them: only the process tree does."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_job(proc: subprocess.Popen) -> None:
    """kill -9 of the whole job: the launcher and every rank, and whatever the ranks started.

    First SIGSTOP the tree, top down, so no process can start another or notice its parent dying, then list it
    again (a child started before its parent stopped is in the second listing) and SIGKILL every process in it.
    Returns once all of them are gone."""
    import psutil

    seen = {}
    for _ in range(2):
        for p in job_processes(proc):
            if p.pid not in seen:
                seen[p.pid] = p
                try:
                    p.suspend()
                except psutil.NoSuchProcess:
                    pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in seen.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs([p for p in seen.values() if p.pid != proc.pid], timeout=30)
    assert not alive, f"kill_job: still alive after SIGKILL: {[p.pid for p in alive]}"


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def losses(run_dir: Path) -> dict[int, float]:
    """{step: training loss}; a step logged twice (a resumed run appends) keeps its last value."""
    return {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}


def evals(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in metrics(run_dir) if "eval_loss" in m}


def sample_ids(run_dir: Path) -> dict[int, list[int]]:
    path = Path(run_dir) / "sample_ids.jsonl"
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = sorted(rec["ids"])
    return out


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n" \
                                 f"{proc.stderr[-6000:]}"


def cached_run(root: Path, name: str, config: str, overrides: list[str], nproc: int, timeout: float = 300,
               extra_env: dict | None = None) -> Path:
    """Run a training job once per test session (several tests read the same run); returns its run dir.

    ``trainer.run_dir`` and ``checkpoint.dir`` are set to ``root/name/{run,ckpt}``."""
    base = root / name
    run_dir = base / "run"
    if (base / "DONE").exists():
        return run_dir
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    overrides = [f"trainer.run_dir={run_dir}", f"checkpoint.dir={base / 'ckpt'}", *overrides]
    proc = run_train(config, overrides, nproc, base, timeout=timeout, extra_env=extra_env)
    (base / "stdout.txt").write_text(proc.stdout)
    (base / "stderr.txt").write_text(proc.stderr)
    check(proc)
    (base / "DONE").write_text("ok\n")
    return run_dir
