"""Stop requests by signal: the loop finishes its step, saves a checkpoint and exits.

SIGTERM (schedulers stopping a job), SIGINT (Ctrl-C) and SIGUSR1 (what SLURM sends ahead of the
time limit with --signal=USR1@300, leaving time to save a large model before the SIGTERM and
SIGKILL that follow). The request is shared with every rank through the step's all-reduce, so all
ranks stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signal: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        """Catch the stop signals. Only the main thread may install handlers (Ray Train runs the loop
        in a worker thread; Ray owns signals there)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, _frame):
            self.signal = signum

        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)
