#!/usr/bin/env bash
# The test command (README, CI): install, then run the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest tests "$@"
