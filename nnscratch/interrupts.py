"""Ctrl-C during training: noted, acted on between batches, never in the middle of an update.

A KeyboardInterrupt raised at an arbitrary bytecode could stop an optimizer step half-way (some
parameters updated, others not) or a bookkeeping line after the step but before its count, and a
checkpoint of that state would not continue the run with the same bits. So while training runs,
SIGINT only sets a flag (``Interrupts.requested``) and prints one line; the loop looks at the flag
between batches and stops cleanly. Pressing it again changes nothing more: the run is already
stopping, and the checkpoint written then is consistent.

Signal handlers can be installed in the main thread only; elsewhere (a run started from a thread)
the block does nothing and Ctrl-C raises KeyboardInterrupt as usual.
"""
from __future__ import annotations

import signal
import sys
import threading


class Interrupts:
    """``with Interrupts() as stop:`` ... ``if stop.requested: ...``"""

    def __init__(self, message: str = "stopping after this batch: a checkpoint will be saved "
                                      "(--resume continues the run)"):
        self.requested = 0          # how many times Ctrl-C was pressed
        self.message = message
        self._before = None

    def _handler(self, signum, frame):
        self.requested += 1
        from . import distributed
        if not distributed.is_main():       # mpiexec passes Ctrl-C to every rank: rank 0 says it once
            return
        if self.requested == 1:
            print(f"\n{self.message}", file=sys.stderr, flush=True)
        else:
            print("already stopping; the checkpoint is being saved", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._before = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._before is not None:
            signal.signal(signal.SIGINT, self._before)
            self._before = None
        return False

