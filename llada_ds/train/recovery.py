"""Bad steps and recovery from them.

A step whose global loss is non-finite, or spikes above recovery.spike_factor x its running mean,
is not applied: its last backward is poisoned with NaN, which makes ZeRO-3 discard the gradients
and skip the update (DeepSpeed's own overflow path, so optimizer state stays untouched). After
recovery.max_bad_steps bad steps in a row the trainer reloads the last checkpoint and multiplies
the learning rate by recovery.lr_factor (what LLaDA's authors did by hand after a loss spike);
after recovery.max_recoveries reloads it gives up.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..config import RecoverySection
from .state import RunState


class BadStepGuard:
    def __init__(self, cfg: RecoverySection) -> None:
        self.cfg = cfg
        self.bad_in_a_row = 0  # not saved: a resumed run starts a fresh streak

    def reason(self, mean_loss: float, state: RunState) -> Optional[str]:
        """Why a step with this global mean loss must not update the weights (None: it may)."""
        if not math.isfinite(mean_loss):
            return "non-finite loss"
        if self._spike_limit(state) is not None and mean_loss > self._spike_limit(state):
            return (f"loss spike ({mean_loss:.3g} > {self.cfg.spike_factor:g} x running mean "
                    f"{state.loss_ema:.3g})")
        return None

    def flag(self, mean_loss: torch.Tensor, state: RunState) -> torch.Tensor:
        """The same decision as `reason`, on the device (a bool tensor), with no host synchronisation."""
        bad = ~torch.isfinite(mean_loss)
        limit = self._spike_limit(state)
        return bad if limit is None else bad | (mean_loss > limit)

    def _spike_limit(self, state: RunState) -> Optional[float]:
        c = self.cfg
        if c.spike_factor and state.loss_ema is not None and state.good_steps >= c.spike_warmup_steps:
            return c.spike_factor * state.loss_ema
        return None

    def record(self, loss: float, skipped: bool, state: RunState) -> None:
        """Count a finished step: the streak of bad ones, or the running mean of good ones."""
        if skipped:
            self.bad_in_a_row += 1
            return
        self.bad_in_a_row = 0
        state.good_steps += 1
        state.loss_ema = loss if state.loss_ema is None else 0.95 * state.loss_ema + 0.05 * loss

    @property
    def must_recover(self) -> bool:
        return self.bad_in_a_row >= self.cfg.max_bad_steps

    def recovered(self, state: RunState) -> None:
        """After a reload: count it, lower the learning rate (across recoveries: the checkpoint may
        predate the last one, and its own counters must not undo it, or a recurring bad streak
        would loop forever)."""
        self.bad_in_a_row = 0
        state.recoveries += 1
        state.lr_scale *= self.cfg.lr_factor
