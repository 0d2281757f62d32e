"""``m2dist.cli.exit.exit_process``: the quick exit still does what a normal exit does that matters -- the exit
code, non-daemon threads finished, atexit handlers run, buffered output flushed -- and ``python -m m2dist`` uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import atexit, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
def late_worker():
    time.sleep(0.5)
    (out / "thread").write_text("done")
threading.Thread(target=late_worker).start()
atexit.register(lambda: (out / "atexit").write_text("ran"))
sys.stdout.write("buffered, no newline")
from m2dist.cli.exit import exit_process
exit_process(3)
"""


def test_quick_exit_keeps_code_threads_atexit_and_output(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newline"
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"


PROGRAM = r"""
import os, runpy, sys
import m2dist.cli.exit as quick
quick.exit_process = lambda code: (print("quick exit", code, flush=True), os._exit(code))
sys.argv = ["m2dist", "train", "--config", "/nonexistent.yaml"]
runpy.run_module("m2dist", run_name="__main__")
"""


def test_the_program_exits_through_it_with_the_commands_code():
    # python -m m2dist (what torchrun and srun start) ends through exit_process, with the command's code.
    proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "config file not found: /nonexistent.yaml" in proc.stderr
    assert proc.stdout.strip() == "quick exit 2", proc.stdout
    # The installed `m2dist` script: the same entry point.
    assert 'm2dist = "m2dist.cli.main:run"' in (REPO / "pyproject.toml").read_text()
