#!/usr/bin/env bash
# The wheels the lent GPU machine lacks (its image has torch and triton, not DeepSpeed, megatron-core or streaming:
# shared/reference/stack-facts.md, last sections), into the git-ignored .whl/ that a device call carries. Run here,
# once; then, on the GPU machine, before anything else:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d .whl \
  megatron-core==0.16.1 mosaicml-streaming==0.13.0 brotli catalogue cramjam python-snappy zstd opentelemetry-api \
  hjson py-cpuinfo pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection msgpack ninja \
  zstandard==0.25.0 importlib-metadata zipp
# PyPI has only DeepSpeed's sdist: a pure-python wheel (no ops compiled in) built with the venv's torch.
ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1 || \
  .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
ls .whl | wc -l; du -sh .whl
