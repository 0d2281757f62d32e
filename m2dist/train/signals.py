"""Preemption: SIGTERM/SIGUSR1 ask the trainer to finish the step it is in, save, and exit for a requeue.

The handler only sets a flag (nothing else is safe inside a signal handler). The loop checks it after every step
through an all-reduce, because a signal may reach only some ranks (e.g. one node's tasks), and all ranks must
agree to enter the collective checkpoint save at the same step. A signal that lands after a rank's check has read
its flag (while it waits in that check's all-reduce, say) is acted on at the next check: the job then finishes one
more step than the one in progress, never more.

Ctrl-C (SIGINT; torchrun forwards it to its workers) takes the same path: finish the step, save, then exit 130
(interrupted, no requeue marker). The first one puts SIGINT back to its default action, so a second Ctrl-C ends
the process at once, even inside a collective or a save (checkpoints commit atomically, so nothing torn is left).
"""

from __future__ import annotations

import os
import signal
from typing import Optional

import torch
import torch.distributed as dist

from m2dist.utils.logging import get_logger

log = get_logger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Exit code of a run stopped by Ctrl-C after saving (the shell's code for SIGINT): a user's stop, not a requeue.
INTERRUPT_EXIT_CODE = 130
INTERRUPT_MESSAGE = (b"m2dist: Ctrl-C: saving a checkpoint after the current step, then exiting "
                     b"(Ctrl-C again aborts at once, without saving)\n")


class PreemptionHandler:
    def __init__(self, signals=PREEMPTION_SIGNALS, interrupt: bool = True):
        self.received: Optional[int] = None
        # The loop sets the step in progress; the handler notes it, so the marker can say when the signal came.
        self.current_step = 0
        self.signal_step: Optional[int] = None
        self.previous = {}
        for sig in signals:
            self.previous[sig] = signal.signal(sig, self._handle)
        if interrupt:
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.signal_step = self.current_step
        # A preemption outranks a Ctrl-C on the same rank: the job is requeued, not just stopped.
        if self.received is None or self.received == signal.SIGINT:
            self.received = signum

    def _interrupt(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the second Ctrl-C: the default action, at once
        if os.environ.get("RANK", "0") == "0":
            os.write(2, INTERRUPT_MESSAGE)  # async-signal-safe, unlike logging
        self._handle(signum, frame)

    @property
    def interrupted(self) -> bool:
        """After ``should_stop``: the stop is a Ctrl-C (exit 130), not a preemption (exit 85, requeue)."""
        return self.received == signal.SIGINT

    def should_stop(self, group=None) -> bool:
        """Collective: True on every rank if any rank received a preemption signal. Afterwards ``signal_step`` is,
        on every rank, the earliest step in progress when a rank got it, and ``received`` a signal number."""
        got = self.received is not None
        # One MAX all-reduce carries both: the flag, and the earliest signal step (negated so MAX finds the min).
        t = torch.tensor([int(got), -(self.signal_step if got else 1 << 30), self.received or 0], dtype=torch.int64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            # A CPU tensor: the caller passes a gloo group when the default backend is NCCL.
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        if t[0].item():
            self.signal_step = int(-t[1].item())
            self.received = int(t[2].item())
            return True
        return False

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
