"""Fault injection (the run config's `faults` section): failure paths exercised on purpose.

Tests use it to prove that a non-finite loss is skipped and recovered from, and that a job killed
in the middle of a checkpoint save resumes from the previous one. Real runs leave it empty.
"""

from __future__ import annotations

from ..config import FaultsSection


class Faults:
    def __init__(self, cfg: FaultsSection) -> None:
        self.cfg = cfg
        self._done: set[int] = set()

    def nonfinite(self, step: int) -> bool:
        """Whether step number `step` (counted from 1) gets a non-finite loss (once per process: a
        step re-run after a recovery is then healthy)."""
        if step in self.cfg.nonfinite_steps and step not in self._done:
            self._done.add(step)
            return True
        return False

    @property
    def save_delay_seconds(self) -> float:
        return self.cfg.save_delay_seconds
