"""What the data side hands the training step: micro-batches, the batch split, the data state.

A global batch of B sequences is split over W data-parallel ranks in micro-batches of m: each rank
takes B / W sequences in B / (W m) micro-batches (gradient accumulation). The split is the same
rule wherever it is needed (DeepSpeed's config, the loaders, the Ray job's allowed sizes), so it is
written once here.

The data state a checkpoint keeps is global counters only (samples consumed, seed, sequence
length, data fingerprint): a run resumed on any number of ranks continues the exact global order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ..errors import BatchSplitError, DataStateError


@dataclass
class MicroBatch:
    """One forward's worth of training data on one rank."""

    tokens: torch.Tensor  # (m, length) long
    sample_indices: list[int]  # global sample index of each row (keys the diffusion noise too)
    doc_ids: Optional[torch.Tensor] = None  # (m, length) document ids, when document masking is on
    prompt_lengths: Optional[torch.Tensor] = None  # (m,) for SFT: tokens of each row that are prompt
    padding: int = 0  # EOS padding tokens added to make the rows one length (SFT)
    # The host micro-batch this one was copied to the device from (set by `to`).
    host: Optional["MicroBatch"] = field(default=None, repr=False, compare=False)

    def to(self, device: torch.device | str) -> "MicroBatch":
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device)

        return MicroBatch(self.tokens.to(device), self.sample_indices, move(self.doc_ids), move(self.prompt_lengths),
                          self.padding, self if self.tokens.device.type == "cpu" else self.host)

    def on_host(self) -> "MicroBatch":
        """This micro-batch on the host: itself, or the host batch it was copied to the device from,
        so that host-side work (token checks, the diffusion noise) reads nothing back from the device."""
        if self.tokens.device.type == "cpu":
            return self
        return self.host if self.host is not None else self.to("cpu")


def split_batch(global_batch: int, micro_batch: int, world: int) -> int:
    """Micro-batches per rank (gradient accumulation steps) for this split, or a clear error."""
    if global_batch <= 0 or micro_batch <= 0 or world <= 0 or global_batch % (world * micro_batch):
        raise BatchSplitError(
            f"train.global_batch={global_batch} is not divisible by world size {world} x micro batch {micro_batch}: "
            f"it cannot be split over {world} ranks in micro batches of {micro_batch}; it must be a multiple of "
            f"world size x micro batch = {world * micro_batch}")
    return global_batch // (world * micro_batch)


@dataclass(frozen=True)
class DataState:
    """What a checkpoint keeps of the data loader: global counters only."""

    samples_consumed: int
    seed: int
    seq_len: int
    data_fingerprint: str
    global_batch: Optional[int] = None  # None in checkpoints written before it was recorded

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataState":
        return cls(**d)

    def check_batch(self, global_batch: int, saved_step: Optional[int] = None) -> None:
        """Refuse to continue with another global batch than the checkpoint was trained with."""
        saved_batch = self.global_batch or (self.samples_consumed // saved_step if saved_step else None)
        if saved_batch is not None and saved_batch != global_batch:
            raise DataStateError(
                f"the checkpoint was trained with train.global_batch={saved_batch}, this run asks for {global_batch}: "
                "the data order, the noise and the learning-rate schedule all count steps of that batch, so a run "
                f"cannot change it. Resume with --train.global_batch={saved_batch}, or start a new run (another "
                "--run-dir) with --train.init_from=CHECKPOINT to keep only the weights")

    def resume_step(self, here: "DataState", global_batch: int, saved_step: Optional[int] = None) -> int:
        """The optimizer step to continue from, after checking this saved state belongs to the data
        and settings of this run (`here`, the state of the run at step 0). saved_step: the step the
        checkpoint says it is at, to recognise a changed global batch in older checkpoints."""
        for key in ("seed", "seq_len", "data_fingerprint"):
            if getattr(self, key) != getattr(here, key):
                raise DataStateError(
                    f"checkpoint data state has {key}={getattr(self, key)!r}, this run has {getattr(here, key)!r}")
        self.check_batch(global_batch, saved_step)
        if self.samples_consumed % global_batch:
            raise DataStateError(
                f"checkpoint consumed {self.samples_consumed} samples, not a multiple of the global batch "
                f"{global_batch}: the global batch must not change across a resume")
        return self.samples_consumed // global_batch


class CountedBatches:
    """The data state of a batch source that takes `global_batch` samples per step from cached data
    in a seeded order (SFT conversations, preference pairs, RL prompts): the subclass sets `data`
    (with a `fingerprint`), `global_batch`, `seed` and `seq_len`, and defines `step`."""

    data: object
    global_batch: int
    seed: int
    seq_len: int

    def state(self, steps_done: int) -> DataState:
        return DataState(steps_done * self.global_batch, self.seed, self.seq_len, self.data.fingerprint,
                         self.global_batch)

    def resume_step(self, state: DataState, saved_step: Optional[int] = None) -> int:
        """The step to continue from, after checking the state belongs to this data and config."""
        return state.resume_step(self.state(0), self.global_batch, saved_step)
