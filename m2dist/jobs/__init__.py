"""Slurm integration: sbatch rendering and submission, job status, sweeps and their reports.

The job itself is ``slurm/train.sbatch`` (one srun task per node -> ``slurm/torchrun_node.sh`` ->
torchrun -> ``m2dist train``); this package writes, submits and reads back after it.
"""
