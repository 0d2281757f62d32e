"""The README's numbers are produced by commands; these tests keep them in sync."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _between(text: str, begin: str, end: str) -> str:
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def test_preset_table_matches_command_output():
    readme = (ROOT / "README.md").read_text()
    table = _between(readme, "<!-- presets:begin -->", "<!-- presets:end -->")
    out = subprocess.run(
        [sys.executable, "-m", "m2dist.models.presets", "--markdown"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert table == out, "README preset table is stale: rerun `python -m m2dist.models.presets --markdown`"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
