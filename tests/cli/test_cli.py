import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2dist.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "config" in out and "--log-level" in out


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "m2dist", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "m2dist" in proc.stdout


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_show_succeeds_on_every_config(path, capsys):
    assert main(["config", "show", str(path)]) == 0
    assert "trainer:" in capsys.readouterr().out


def test_mistyped_key_exits_nonzero_with_one_line_error():
    proc = subprocess.run(
        [sys.executable, "-m", "m2dist", "config", "show", str(CONFIGS[0]), "trainer.max_stepz=1"],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "trainer.max_stepz" in lines[0] and "trainer.max_steps" in lines[0] and "command line" in lines[0]


def test_bench_memory_runs_without_a_gpu(tmp_path):
    # the one benchmark that needs no GPU: it computes what a step keeps on fake CUDA tensors
    env = dict(os.environ, ROWS="m2-gpt-tiny@128", TOKENS="512", OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "m2dist", "bench", "memory"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "m2-gpt-tiny @128: 512 tokens" in proc.stdout and (tmp_path / "activation_memory.json").exists()
