"""Preemption: SIGTERM/SIGUSR1 ask the trainer to finish the step it is in, save, and exit for a requeue.

The handler only sets a flag (nothing else is safe inside a signal handler). The loop checks it after every step
through an all-reduce, because a signal may reach only some ranks (e.g. one node's tasks), and all ranks must
agree to enter the collective checkpoint save at the same step. A signal that lands after a rank's check has read
its flag (while it waits in that check's all-reduce, say) is acted on at the next check: the job then finishes one
more step than the one in progress, never more.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch
import torch.distributed as dist

from m2dist.utils.logging import get_logger

log = get_logger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.received: Optional[int] = None
        # The loop sets the step in progress; the handler notes it, so the marker can say when the signal came.
        self.current_step = 0
        self.signal_step: Optional[int] = None
        self.previous = {}
        for sig in signals:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.signal_step = self.current_step
        self.received = signum

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
