"""Issue 14.11: the commands in README.md, CONTRIBUTING.md and slurm/README.md run as written (on this machine,
after `bash scripts/setup.sh`), or say what they need."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "CONTRIBUTING.md", "slurm/README.md"]


def _lines():
    for doc in DOCS:
        for n, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
            yield f"{doc}:{n}", line


def test_every_test_named_in_the_docs_exists():
    named = [(where, path, name) for where, line in _lines()
             for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", line)]
    assert named
    for where, path, name in named:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{where}: {path}::{name} is not a test"


def test_repo_code_runs_with_the_venv_python():
    # A bare `python` is whatever is on PATH (often no torch at all); the GPU machine's `python3` is documented.
    bare = [(where, line.strip()) for where, line in _lines()
            if re.search(r"(?<![\w./-])python (benchmarks/|scripts/|-m (m2dist|pytest))", line)
            and "M2DIST_GPU_TESTS=1" not in line]
    assert not bare, bare


def test_no_tensor_parallel_train_command_on_one_process():
    single = [(where, line.strip()) for where, line in _lines()
              if re.match(r"\s*(\$ )?m2dist train\b", line) and re.search(r"parallel\.tensor=([2-9]|\d\d)", line)]
    assert not single, f"parallel.tensor > 1 needs that many processes (torchrun): {single}"


def test_marker_expressions_keep_the_gpu_tests_out():
    # `-m EXPR` replaces pyproject's `-m "not gpu"`; an expression without gpu also runs the GPU-only tests.
    exprs = [(where, expr) for where, line in _lines() if "pytest" in line
             for expr in re.findall(r"-m \"([^\"]+)\"", line)]
    assert exprs
    assert all("gpu" in expr for _, expr in exprs), exprs


@pytest.mark.parametrize("command", [
    "config show configs/smoke/m2-gpt-tiny.yaml trainer.max_steps=100 parallel.tensor=2",
    "config show configs/smoke/m2-gpt-tiny.yaml trainer.max_stepz=1",
])
def test_config_commands_of_the_readme(command):
    assert f"m2dist {command}" in (ROOT / "README.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "m2dist", *command.split()], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    if "stepz" in command:  # the README shows its error line verbatim
        assert proc.returncode == 2 and proc.stderr.strip() in (ROOT / "README.md").read_text(), proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
