"""Ending an m2dist process without CPython's interpreter teardown.

Why: after a command has returned -- its files closed, checkpoints committed, the process group destroyed -- CPython
still deallocates every module and object it loaded (torch, torch._dynamo, DeepSpeed, transformers through
streaming): about a second per process on a 2-core machine, paid by every rank of every launch (a 2-step tiny
``m2dist train``: 6.5-6.7 s wall through ``sys.exit(main())``, 5.6-6.1 s through this). What a normal exit does that matters still
happens, in the same order: non-daemon threads are joined, every ``atexit`` handler runs (streaming unlinks its shared
memory, multiprocessing reaps its children, logging flushes), stdio is flushed. Only the teardown of objects no
handler owns is skipped, so a command must close what it writes, as m2dist's commands do.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_process(code: int) -> None:
    threading._shutdown()  # what Py_FinalizeEx does first: wait for the non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say
            pass
    os._exit(code)
