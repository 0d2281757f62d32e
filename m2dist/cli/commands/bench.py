"""``m2dist bench kernels|layers|profile|train|memory``: run the benchmark scripts in ``benchmarks/`` (see its README);
all but ``memory`` (what a training step keeps for the backward, computed on fake CUDA tensors) need a GPU.

The scripts read their knobs from the environment (LENS, QUICK, M2_REFERENCE_DIR, OUT, ...); this command only
locates and runs them, so ``m2dist bench layers`` and ``python3 benchmarks/layer_bench.py`` are the same run.
"""

from __future__ import annotations

SCRIPTS = {"kernels": "kernel_bench.py", "layers": "layer_bench.py", "profile": "profile_layer.py",
           "train": "train_bench.py", "memory": "activation_memory.py"}
RUN_ON_CPU = {"memory"}


def _run(args) -> int:
    import os
    import runpy
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    path = os.path.join(root, "benchmarks", SCRIPTS[args.what])
    if not os.path.exists(path):
        print(f"m2dist bench: {path} not found (run from a source checkout)", file=sys.stderr)
        return 2
    import torch

    if args.what not in RUN_ON_CPU and not torch.cuda.is_available():
        print("m2dist bench: needs a CUDA device (see benchmarks/README.md)", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(path))
    runpy.run_path(path, run_name="__main__")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks: kernels, layer stacks, a step profile, the trainer beside the bare model (GPU); "
                      "a step's activation memory (CPU)")
    parser.add_argument("what", choices=sorted(SCRIPTS), help="which benchmark script to run")
    parser.set_defaults(func=_run)
