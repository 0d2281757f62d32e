"""benchmarks/scaling_bench.py on CPU (issue 17): 2 gloo processes, the tiny M2-GPT, every row kind once -- the
one-process row, DP=2 (ZeRO-1), TP=2, CP=2, the TP collectives (one run) and the resume 2 -> 1 -> 2 processes
(another) -- each launched by torchrun as on the GPU node. The JSON holds every row with positive speed and memory, the efficiency
column follows from the rows, both resumes logged their reshard, and the resumed losses are the uninterrupted run's
(fp32 on CPU: to 1e-4, far inside the bf16 tolerance the GPU run is judged by)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "scaling_bench.py"


def _module():
    spec = importlib.util.spec_from_file_location("scaling_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scaling_bench"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_row_specs_and_layouts():
    sb = _module()
    r = sb.parse_row("m2-gpt-360m@2048:dp2.z3")
    assert (r.preset, r.seq_len, r.kind, r.nproc, r.dp, r.zero) == ("m2-gpt-360m", 2048, "train", 2, 2, 3)
    r = sb.parse_row("m2-gpt-360m@32768:cp2")
    assert (r.cp, r.tp, r.dp, r.nproc, r.zero) == (2, 1, 1, 2, None)
    assert sb.parse_row("x@128:comm.tp2").kind == "comm" and sb.parse_row("x@128:resume.dp2").kind == "resume"
    with pytest.raises(ValueError, match="unknown token"):
        sb.parse_row("x@128:pp2")
    # The trainer's own wording (m2dist/checkpoint/layout.py), which the resume row looks for in the log.
    assert sb.layout_change((1, 1, 2), (1, 1, 1)) == "data parallel 2 -> 1"
    cp_args = sb.train_overrides(sb.parse_row("m2-gpt-tiny@128:cp2"), "d", "t.model", "r", 6, 2)
    assert "parallel.context=2" in cp_args and "parallel.tensor=1" in cp_args
    assert "gpt-360m@32768:cp2" not in sb.default_rows(8)  # CP refuses the Transformer baselines
    assert "m2-gpt-360m@2048:dp8.z1" in sb.default_rows(8) and "m2-gpt-360m@2048:dp4.z1" not in sb.default_rows(2)


def test_finalize_efficiency_against_the_one_gpu_row():
    sb = _module()
    base = dict(kind="train", preset="p", seq_len=8, nproc=1, tp=1, cp=1, tokens_per_s=1000.0, peak_mem_gib=10.0,
                step_ms=100.0)
    dp2 = dict(base, nproc=2, tokens_per_s=1800.0, peak_mem_gib=8.0)
    tp2 = dict(base, nproc=2, tp=2, tokens_per_s=1500.0, peak_mem_gib=6.0, step_ms=80.0)
    other = dict(base, seq_len=16, nproc=2, tokens_per_s=5.0)  # no one-GPU row at its length
    comm = dict(kind="comm", preset="p", seq_len=8, tp=2, num_layers=3, mixer_all_reduce=dict(ms=1.0),
                mlp_all_gather=dict(ms=0.5))
    rows = sb.finalize([base, dp2, tp2, other, comm])
    assert rows[0]["scaling_efficiency"] == 1.0 and rows[0]["meets_goal"] is None
    assert rows[1]["scaling_efficiency"] == 0.9 and rows[1]["meets_goal"] and rows[1]["mem_vs_1gpu"] == 0.8
    assert rows[2]["scaling_efficiency"] == 0.75 and rows[2]["speedup_vs_1gpu"] == 1.5 and not rows[2]["meets_goal"]
    assert "scaling_efficiency" not in rows[3]
    assert rows[4]["collectives_ms_per_step"] == 9.0  # 2 (fwd, bwd) x 3 layers x 1.5 ms
    assert rows[4]["collectives_share_of_tp_step"] == round(9.0 / 80.0, 4)


P = "m2-gpt-tiny@128"


def _run(tmp_path, data, rows: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, CPU_TEST="1", DATA=str(data), OUT=str(tmp_path / "out"), DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    for key in ("RESULT_NAME", "TOKENS", "STEPS", "WARMUP", "GPUS", "BUDGET_S", "TRAINER_ARGS", "KEEP_RUNS",
                "PREP_ONLY", "RESUME_STEPS", "RESUME_RTOL", "VOCAB"):
        env.pop(key, None)
    env["ROWS"] = rows
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "scaling_bench.json").read_text())
    assert (tmp_path / "out" / "scaling_bench.png").stat().st_size > 0
    assert result["nccl_env"] == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    return proc, result


@pytest.fixture
def data(bench_data):
    """train_bench's data at the CPU sizes, prepared once for the session (conftest.py)."""
    return bench_data


@pytest.mark.slow
def test_dp_tp_rows_and_the_tp_collectives_on_two_gloo_processes(tmp_path, data):
    # No CP row: it is the same launch with parallel.context=2 (tests/train/test_context_parallel.py runs that path);
    # the suite's time budget pays for one launch less.
    rows_spec = [P, f"{P}:dp2.z1", f"{P}:tp2", f"{P}:comm.tp2"]
    proc, result = _run(tmp_path, data, ",".join(rows_spec))
    rows = {r["spec"]: r for r in result["rows"]}
    assert list(rows) == rows_spec
    for r in rows.values():
        assert "error" not in r and "skipped" not in r, r

    base = rows[P]
    for spec, nproc, tokens_per_step in ((P, 1, 512), (f"{P}:dp2.z1", 2, 1024), (f"{P}:tp2", 2, 512)):
        r = rows[spec]
        assert r["nproc"] == nproc and r["tokens_per_step"] == tokens_per_step, r  # DP weak, TP/CP strong scaling
        assert r["tokens_per_s"] > 0 and r["peak_mem_gib"] > 0, r
        assert r["logged_steps"] == [2, 4, 6] and all(math.isfinite(x) for x in r["losses"]), r
        assert "torchrun --standalone --nproc_per_node=%d -m m2dist train" % nproc in r["command"]
        assert r["command"].startswith("NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 ")
        # The efficiency column, from the rows: tokens/s per GPU over the one-process row's.
        assert math.isclose(r["tokens_per_s_per_gpu"], r["tokens_per_s"] / nproc, rel_tol=1e-3)
        assert math.isclose(r["scaling_efficiency"], r["tokens_per_s"] / (nproc * base["tokens_per_s"]),
                            abs_tol=1e-4), r
        assert math.isclose(r["mem_vs_1gpu"], r["peak_mem_gib"] / base["peak_mem_gib"], abs_tol=1e-4)
        # tokens/s and step time are medians of the same intervals (two of them: a mean of two inverses).
        assert math.isclose(r["tokens_per_s"], tokens_per_step / (r["step_ms"] / 1e3), rel_tol=0.35), r
    assert "parallel.tensor=2" in rows[f"{P}:tp2"]["command"]
    assert "deepspeed.zero_stage=1" in rows[f"{P}:dp2.z1"]["command"]

    comm = rows[f"{P}:comm.tp2"]
    assert comm["backend"] == "gloo" and comm["mappings_check_ok"] and comm["shape"] == [4, 128, 64]
    assert comm["mixer_all_reduce"]["ms"] > 0 and comm["mlp_all_gather"]["ms"] > 0
    want = 2 * comm["num_layers"] * (comm["mixer_all_reduce"]["ms"] + comm["mlp_all_gather"]["ms"])
    assert math.isclose(comm["collectives_share_of_tp_step"], want / rows[f"{P}:tp2"]["step_ms"], abs_tol=1e-4)
    assert "| model | L | GPUs |" in proc.stdout and "TP collectives, m2-gpt-tiny@128 TP=2" in proc.stdout


@pytest.mark.slow
def test_resume_two_one_two_processes_continues_the_uninterrupted_losses(tmp_path, data):
    spec = f"{P}:resume.dp2.z1"  # ZeRO-1, as the GPU configs: the reshards go through a universal checkpoint
    proc, result = _run(tmp_path, data, spec)
    (resume,) = result["rows"]
    assert resume["spec"] == spec and "error" not in resume, resume
    k = resume["resume_steps"]
    assert k == 2 and [s["end_step"] for s in resume["segments"]] == [2, 4, 6]
    assert [s["layout"] for s in resume["segments"]] == ["tp1 cp1 dp2", "tp1 cp1 dp1", "tp1 cp1 dp2"]
    assert [s["expected_reshard"] for s in resume["segments"][1:]] == ["data parallel 2 -> 1", "data parallel 1 -> 2"]
    assert resume["reshard_logged"] and all(s["reshard_logged"] for s in resume["segments"][1:]), resume["segments"]
    got, want = resume["losses"], resume["uninterrupted_losses"]
    assert len(got) == len(want) == 3 * k and want[0] != want[-1]  # it trains
    diff = max(abs(a - b) / abs(b) for a, b in zip(got, want))
    assert math.isclose(resume["loss_max_rel_diff"], diff, rel_tol=1e-9, abs_tol=1e-12)
    # fp32 on CPU: only the reduction order differs (measured 8e-8); the GPU run is judged by RESUME_RTOL (bf16).
    assert diff < 1e-4 and resume["losses_within_rtol"], (got, want)
    assert f"resume {spec} (k=2)" in proc.stdout
