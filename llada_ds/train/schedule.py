"""Learning-rate schedules as pure functions of the optimizer step (no scheduler state to save).

The rate of step s (0-based) is base_lr * shape(s), times the run's recovery scale. Warmup is
linear from base_lr / warmup_steps at step 0 (never 0: a zero first step would waste a batch).
- wsd (Warmup-Stable-Decay, as LLaDA): warmup, then the stable level (base_lr, lowered at each
  milestone step to that milestone's rate), then a linear decay to final_lr over the last
  decay_steps steps.
- cosine: warmup, then cosine from base_lr to final_lr at the last step.
- constant: warmup, then base_lr.
"""

from __future__ import annotations

import math

from ..config import ScheduleSection


def learning_rate(step: int, total_steps: int, base_lr: float, sched: ScheduleSection) -> float:
    warmup = sched.warmup_steps
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    if sched.kind == "constant":
        return base_lr
    if sched.kind == "cosine":
        span = max(total_steps - warmup - 1, 1)
        progress = min((step - warmup) / span, 1.0)
        return sched.final_lr + 0.5 * (base_lr - sched.final_lr) * (1 + math.cos(math.pi * progress))
    # wsd
    level = base_lr
    for at, lr in sorted((int(k), float(v)) for k, v in sched.milestones.items()):
        if step >= at:
            level = lr
    decay_start = total_steps - sched.decay_steps
    if sched.decay_steps and step >= decay_start:
        progress = (step - decay_start + 1) / sched.decay_steps
        return level + (sched.final_lr - level) * progress
    return level
