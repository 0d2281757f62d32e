"""The checkpoint tests share the trainer tests' data, configs and runs (made once per session, on disk)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
sys.path.insert(0, str(Path(__file__).parent))  # zero_files

from conftest_shared import configs, run, sample_data  # noqa: E402,F401
