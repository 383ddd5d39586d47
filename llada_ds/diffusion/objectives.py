"""What is trained: one interface that turns a micro-batch into a loss and its figures.

    loss, stats = objective.loss(model, micro_batch, step)
    loss.backward()

An objective owns the forward process and the loss of one way of training the mask predictor:
- `PretrainObjective`: LLaDA pre-training (random t per sample, tokens masked with probability
  p = (1 - eps) t + eps, cross-entropy on masked tokens weighted by 1/p, over b * l positions);
- `SFTObjective`: LLaDA's SFT (the prompt is never masked, each sample normalised by its answer
  length, EOS padding included);
- `AutoregressiveObjective`: the baseline of the paper's comparisons, the same network with a
  causal mask and next-token loss.
The training loop, the evaluator and the plain reference loop only ever call `loss`; objectives
added later implement the same method (preference optimisation: diffusion/preference.py; RL:
diffusion/grpo.py, which also prepares each step's batch, see `Objective`).

The figures come back as `StepStats`: plain sums kept on the device (no host synchronisation per
micro-batch), added up over a step's micro-batches and all-reduced once per optimizer step. The
forward process runs on the host copy of the micro-batch (`MicroBatch.on_host`, kept by
`MicroBatch.to`), where its noise is drawn, and the loss in the model's output head in chunks
(model/head.py), so an objective reads nothing back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterable, Optional, Protocol

import torch

from ..data.batch import MicroBatch
from ..errors import ConfigError, DataError
from .losses import N_BUCKETS, DiffusionLoss, model_autoregressive_loss, model_diffusion_loss
from .masking import NoiseConfig, check_tokens, pretrain_batch, sft_batch

OBJECTIVES = ("pretrain", "sft", "ar")


@dataclass
class StepStats:
    """Sums over micro-batches (after `all_reduce`, over ranks too), float64 on the device.

    loss is the sum of the micro-batches' losses; the mean loss of a step is loss / (micro-batches
    x ranks). bucket_loss / bucket_count split the per-sample normalised loss by t-bucket
    [k/K, (k+1)/K) (the diffusion objectives only).
    """

    loss: torch.Tensor
    masked: torch.Tensor  # tokens scored by the loss
    correct: torch.Tensor  # of which the argmax prediction is right
    tokens: torch.Tensor  # tokens processed (after a random-length cut)
    padding: torch.Tensor  # EOS padding tokens among them (SFT)
    bucket_loss: torch.Tensor  # (N_BUCKETS,)
    bucket_count: torch.Tensor  # (N_BUCKETS,)
    # Figures of one objective (preference accuracy, rewards, KL...): name -> (sum, count), each
    # reported as sum / count. Empty for pre-training, SFT and AR.
    extra: dict = field(default_factory=dict)

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> "StepStats":
        z = lambda n=(): torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z(), z(), z(), z(N_BUCKETS), z(N_BUCKETS))

    @classmethod
    def of(cls, out: DiffusionLoss, tokens: int, padding: int = 0) -> "StepStats":
        """The figures of one micro-batch's loss."""
        f64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
        device = out.loss.device
        return cls(f64(out.loss), f64(out.n_masked), f64(out.n_correct),
                   torch.tensor(float(tokens), dtype=torch.float64, device=device),
                   torch.tensor(float(padding), dtype=torch.float64, device=device),
                   f64(out.bucket_loss), f64(out.bucket_count))

    def __add__(self, other: "StepStats") -> "StepStats":
        extra = dict(self.extra)
        for name, value in other.extra.items():
            extra[name] = extra[name] + value if name in extra else value
        return StepStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self) if f.name != "extra"),
                         extra=extra)

    def flat(self) -> torch.Tensor:
        """One float64 vector, for a single all-reduce (the extra figures last, by name)."""
        parts = [getattr(self, f.name).reshape(-1) for f in fields(self) if f.name != "extra"]
        return torch.cat(parts + [self.extra[name].reshape(-1) for name in sorted(self.extra)])

    @classmethod
    def named(cls, values: list[float], extra: Iterable[str] = ()) -> dict:
        """The figures of a flat() vector moved to the host, by name (buckets as lists, the extra
        figures, named in `extra`, as (sum, count) pairs under "extra")."""
        out, i = {}, 0
        for f in fields(cls):
            if f.name == "extra":
                continue
            n = N_BUCKETS if f.name.startswith("bucket") else 1
            out[f.name] = values[i] if n == 1 else values[i : i + n]
            i += n
        out["extra"] = {}
        for name in sorted(extra):
            out["extra"][name] = (values[i], values[i + 1])
            i += 2
        return out


def figure(total, count, device) -> torch.Tensor:
    """One extra figure of StepStats: (sum, count) as a float64 pair on the device."""
    return torch.stack([torch.as_tensor(total, dtype=torch.float64, device=device).detach().to(torch.float64),
                        torch.as_tensor(count, dtype=torch.float64, device=device).detach().to(torch.float64)])


class Objective(Protocol):
    """kind, and loss. An objective may also define `prepare(model, micro_batches, step) -> Prepared`:
    then the loop hands it the step's data first, and runs the optimizer updates it returns (GRPO:
    rollouts sampled on the current weights, then several updates on them); without it, a step is
    one update on the step's micro-batches."""

    kind: str

    def loss(self, model: torch.nn.Module, batch: MicroBatch, step: int) -> tuple[torch.Tensor, StepStats]:
        """(differentiable loss of this micro-batch, its figures); step keys the noise."""


@dataclass
class Prepared:
    """What an objective's `prepare` gives the loop for one step."""

    updates: list  # optimizer updates, in order: each a list of this rank's micro-batches for `loss`
    figures: StepStats  # figures of the preparation, reported (all-reduced) with the step's
    samples: list = field(default_factory=list)  # records for the run directory (rank 0's are written)
    # A failure found while preparing (a reward function that raised): the preparation still ran
    # every forward, so that all ranks reach the loop's check together, which stops them all.
    error: Optional[str] = None


@dataclass(frozen=True)
class PretrainObjective:
    mask_id: int
    vocab_size: Optional[int] = None
    noise: NoiseConfig = NoiseConfig()
    kind: str = "pretrain"

    def loss(self, model, batch: MicroBatch, step: int) -> tuple[torch.Tensor, StepStats]:
        host = batch.on_host()
        b = pretrain_batch(host.tokens, host.sample_indices, step, self.mask_id, self.noise, doc_ids=host.doc_ids,
                           vocab_size=self.vocab_size).to(batch.tokens.device)
        out = model_diffusion_loss(model, b, N_BUCKETS)
        return out.loss, StepStats.of(out, b.target.numel(), batch.padding)


@dataclass(frozen=True)
class SFTObjective:
    mask_id: int
    vocab_size: Optional[int] = None
    noise: NoiseConfig = NoiseConfig()
    kind: str = "sft"

    def loss(self, model, batch: MicroBatch, step: int) -> tuple[torch.Tensor, StepStats]:
        if batch.prompt_lengths is None:
            raise DataError("the SFT objective needs prompt lengths: train it on an SFT cache (llada-ds sft-data)")
        host = batch.on_host()
        b = sft_batch(host.tokens, host.prompt_lengths, host.sample_indices, step, self.mask_id, self.noise,
                      vocab_size=self.vocab_size).to(batch.tokens.device)
        out = model_diffusion_loss(model, b, N_BUCKETS)
        return out.loss, StepStats.of(out, b.target.numel(), batch.padding)


@dataclass(frozen=True)
class AutoregressiveObjective:
    mask_id: int
    vocab_size: Optional[int] = None
    noise: NoiseConfig = NoiseConfig()  # unused: nothing is random; kept for one constructor
    kind: str = "ar"

    def loss(self, model, batch: MicroBatch, step: int) -> tuple[torch.Tensor, StepStats]:
        check_tokens(batch.on_host().tokens, self.mask_id, self.vocab_size, batch.sample_indices)
        out = model_autoregressive_loss(model, batch.tokens, batch.doc_ids)
        return out.loss, StepStats.of(out, batch.tokens.numel(), batch.padding)


def make_objective(kind: str, mask_id: int, vocab_size: Optional[int], noise: NoiseConfig) -> Objective:
    """The objective of a run config's objective.kind."""
    classes = {"pretrain": PretrainObjective, "sft": SFTObjective, "ar": AutoregressiveObjective}
    if kind not in classes:
        raise ConfigError(f"objective.kind={kind!r} must be one of {', '.join(classes)}")
    return classes[kind](mask_id, vocab_size, noise)
