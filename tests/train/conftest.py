"""Trainer-test fixtures live in conftest_shared.py, which tests/checkpoint uses too."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest_shared import configs, run, sample_data  # noqa: E402,F401
