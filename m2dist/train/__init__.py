"""The trainer: DeepSpeed engine set-up, LR schedule, metrics, evaluation, preemption, the loop.

``REQUEUE_EXIT_CODE`` is the contract with the launchers (CONTRIBUTING.md, "Preemption and requeue").
"""

REQUEUE_EXIT_CODE = 85
# Written into trainer.run_dir when the trainer exits for a requeue, for launchers that rewrite exit codes.
PREEMPTED_MARKER = "PREEMPTED"

__all__ = ["PREEMPTED_MARKER", "REQUEUE_EXIT_CODE"]
