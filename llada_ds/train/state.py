"""The run state: every number besides DeepSpeed's tensors that a resume needs.

It is saved as run_state.json in each checkpoint (the only copy), together with what the run is:
the data state (global counters), the model shape, the tokenizer fingerprint, the world size that
wrote the checkpoint and the resolved config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional


@dataclass
class RunState:
    step: int = 0  # optimizer steps done (the index of the next step to run)
    tokens_seen: int = 0
    lr_scale: float = 1.0  # lowered by each recovery (recovery.lr_factor)
    recoveries: int = 0
    loss_ema: Optional[float] = None  # running mean of applied steps' losses (spike detection)
    good_steps: int = 0
    wandb_id: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "RunState":
        """The run state inside a checkpoint's run_state.json (other keys are ignored)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def restore(self, saved: dict) -> None:
        """Become the state saved in a checkpoint, in place (the loop holds this object)."""
        vars(self).update(vars(RunState.from_dict(saved)))


@dataclass
class StepResult:
    """What one optimizer step produced, as the loop, the guard and the monitor read it.

    `step` is the step's index, counted from 0: it keys the data order, the noise and the
    schedule. Everything shown to users counts steps from 1 (`number`): "step 5" is the fifth
    optimizer step, after which 5 steps are done and a checkpoint of it is step-00000005.
    """

    step: int
    loss: float  # the global mean of the micro-batch losses
    lr: float
    reason: Optional[str]  # why the update was skipped; None if it was applied
    stop: bool  # a rank received a stop signal
    grad_norm: float
    tokens: float  # tokens processed by all ranks
    masked: float  # tokens scored
    correct: float  # of which predicted right
    padding: float  # EOS padding tokens among `tokens` (SFT)
    bucket_loss: list  # per t-bucket sums of per-sample normalised losses
    bucket_count: list

    @property
    def number(self) -> int:
        return self.step + 1

    @property
    def skipped(self) -> bool:
        return self.reason is not None
