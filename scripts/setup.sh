#!/usr/bin/env bash
# The one install: a virtual environment in .venv with the exact versions CI uses, and m2dist in it.
# pyproject.toml declares ranges (a user brings their own CUDA torch); the pins live here.
# torch 2.14.1 + torchvision 0.29.1 are the builds under which `import streaming` works on CPU
# (shared/reference/stack-facts.md); their wheels come from the machine's local index.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PINS=(
  torch==2.14.1 torchvision==0.29.1
  deepspeed==0.19.8 megatron-core==0.16.1 mosaicml-streaming==0.13.0
  sentencepiece==0.2.3 tensorboard==2.21.0 triton==3.8.0 numpy==2.1.3
  zstandard==0.25.0 einops==0.8.2 PyYAML tqdm pillow safetensors matplotlib
  pytest==9.2.0 pytest-timeout
)

# Skip the install when nothing it depends on changed (re-runs of the two README commands).
stamp=.venv/.m2dist-install-stamp
want=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

# The pinned torch is a CUDA build: with its nvidia-* wheels the venv takes ~6.5 GiB. Say so up front instead of
# letting pip die half-way with "[Errno 28] No space left on device".
need_gib=${M2DIST_SETUP_NEED_GIB:-8}
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
  echo "setup: error: $(pwd) has $((free_kib / 1024 / 1024)) GiB free; installing .venv needs ~${need_gib} GiB (torch's CUDA build). Free space (old clones' .venv, /tmp) and re-run." >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setup: installing into .venv (first time: ~4 min, mostly torch from the local wheel cache)"
.venv/bin/python -m pip install --disable-pip-version-check -q "${PINS[@]}" -e '.[dev]'
.venv/bin/python -W ignore - <<'PY'
import torch, deepspeed, megatron.core, streaming, sentencepiece, m2dist  # noqa: F401  fail loudly here, not mid-test
print(f"setup: ok (torch {torch.__version__}, deepspeed {deepspeed.__version__})")
PY
echo "$want" > "$stamp"
