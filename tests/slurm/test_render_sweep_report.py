"""The Slurm helpers that need no cluster: script rendering, sweep expansion, run records, the report."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from m2dist.config.loader import ConfigError
from m2dist.jobs import records
from m2dist.jobs.render import SbatchOptions
from m2dist.jobs.report import collect, write_report
from m2dist.jobs.submit import prepare
from m2dist.jobs.sweep import expand

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke" / "m2-gpt-tiny.yaml"


def test_rendered_script_carries_resources_arguments_and_the_template_body(tmp_path):
    options = SbatchOptions(nodes=4, gpus_per_node=8, time="02:00:00", partition="gpu", signal_seconds=120)
    sub = prepare(SMOKE, [f"trainer.run_dir={tmp_path / 'run'}", "trainer.max_steps=7"], options)
    script = sub.script
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in ("--nodes=4", "--gpus-per-node=8", "--exclusive", "--time=02:00:00", "--partition=gpu",
                     "--signal=USR1@120", "--requeue", f"--output={tmp_path / 'run'}/logs/slurm-%j.out"):
        assert f"#SBATCH {expected}" in directives, expected
    assert "#SBATCH --nodes=1" not in script  # the template's defaults are replaced, not appended to
    assert f"set -- {SMOKE} trainer.run_dir={tmp_path / 'run'} trainer.max_steps=7" in script
    assert "torchrun_node.sh" in script and "scontrol requeue" in script
    assert sub.run_dir == tmp_path / "run" and sub.script_path is None
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_a_config_typo_fails_before_anything_is_rendered():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        prepare(SMOKE, ["trainer.max_stepz=3"], SbatchOptions())


def test_sweep_grid_expands_to_labelled_points(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "s", "config": str(SMOKE), "out_dir": str(tmp_path / "out"), "overrides": ["trainer.max_steps=5"],
        "slurm": {"gpus_per_node": 8, "time": "00:10:00"},
        "grid": {"model": [str(REPO / "configs/models/m2-gpt-125m.yaml")],
                 "model.max_seq_len": [512, 1024],
                 "layout": [{"name": "tp1", "parallel.tensor": 1}, {"name": "tp2", "parallel.tensor": 2}],
                 "nodes": [1, 2]},
    }, sort_keys=False))
    sweep = expand(spec)
    assert [p.label for p in sweep.points][:3] == ["m2-gpt-125m-seq512-tp1-n1", "m2-gpt-125m-seq512-tp1-n2",
                                                   "m2-gpt-125m-seq512-tp2-n1"]
    assert len(sweep.points) == 8
    last = sweep.points[-1]
    assert (last.options.nodes, last.options.gpus_per_node, last.options.time) == (2, 8, "00:10:00")
    assert "parallel.tensor=2" in last.overrides and "model.max_seq_len=1024" in last.overrides
    assert "model.hidden_size=768" in last.overrides  # from the model file
    assert f"trainer.run_dir={tmp_path / 'out' / last.label}" in last.overrides
    assert f"checkpoint.dir={tmp_path / 'out' / last.label / 'checkpoints'}" in last.overrides


def test_sweep_spec_errors_are_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "config": str(SMOKE), "grid": {"nodez": [1]}}))
    with pytest.raises(ConfigError, match="nodez"):
        expand(spec)
    spec.write_text(yaml.safe_dump({"name": "s", "config": str(SMOKE), "grid": {"trainer.max_stepz": [1]}}))
    with pytest.raises(ConfigError, match="max_stepz"):
        expand(spec)


def test_train_metrics_keep_the_newest_record_per_step_and_skip_a_torn_line(tmp_path):
    lines = [{"step": 1, "loss": 3.0, "tokens_per_s": 10}, {"step": 2, "loss": 2.9, "tokens_per_s": 10},
             {"step": 2, "loss": 2.5, "tokens_per_s": 11},  # the resumed attempt redoes step 2
             {"step": 2, "eval_loss": 2.4}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 3, "lo')
    assert [(m["step"], m["loss"]) for m in records.train_metrics(tmp_path)] == [(1, 3.0), (2, 2.5)]


def _fake_run(run_dir: Path, gpus: int, tokens_per_s: float, seq_len: int = 128) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"arch": "m2_gpt", "hidden_size": 64, "num_layers": 2, "max_seq_len": seq_len},
         "parallel": {"tensor": 1}}))
    steps = [{"step": s, "loss": 5.0 - s / 10, "tokens_per_s": tokens_per_s if s > 1 else 1.0, "mfu": None,
              "mem_gib": 0.5} for s in range(1, 6)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (run_dir / "slurm").mkdir()
    (run_dir / "slurm" / "attempts.jsonl").write_text(json.dumps(
        {"event": "start", "job_id": "1", "attempt": 0, "nodes": gpus, "nproc_per_node": 1, "world_size": gpus}) + "\n")


def test_report_tabulates_runs_and_scaling_efficiency(tmp_path):
    _fake_run(tmp_path / "n1", gpus=1, tokens_per_s=1000.0)
    _fake_run(tmp_path / "n2", gpus=2, tokens_per_s=1500.0)
    _fake_run(tmp_path / "n1-long", gpus=1, tokens_per_s=400.0, seq_len=512)
    rows = {(r.gpus, r.seq_len): r for r in collect(tmp_path)}
    # The first logged step (start-up) is left out of the medians.
    assert rows[(1, 128)].tokens_per_s == 1000.0 and rows[(2, 128)].tokens_per_s == 1500.0
    assert rows[(1, 128)].scaling_efficiency == 1.0
    assert rows[(2, 128)].scaling_efficiency == pytest.approx(0.75)
    assert rows[(1, 512)].scaling_efficiency == 1.0  # its own series
    assert rows[(2, 128)].final_loss == pytest.approx(4.5) and rows[(2, 128)].steps == 5
    paths = write_report(tmp_path)
    with open(paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == 3
    assert "| n2 |" in paths["md"].read_text()
    for key in ("vs_gpus", "vs_seq_len"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"


SPECS = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_sweep_spec_in_configs_expands(spec, tmp_path):
    # Sweep specs are not run configs (`m2dist config show` does not apply): this is their check.
    sweep = expand(spec, out_dir=str(tmp_path))
    assert sweep.points and len({p.label for p in sweep.points}) == len(sweep.points)
