"""A plain single-process training loop: no DeepSpeed, no ranks, the same objectives.

    losses = train_plain(model, objective, batches, steps, optimizer, lr_at, grad_clip)

It is the reference the distributed trainer is tested against (same data order, noise, schedule
and optimizer settings give the same per-step losses to 1e-5), the baseline of
bench/train_bench.py, and the loop the experiments (experiments/) train their small models with.
`overfit_one_batch` (`llada-ds overfit`) uses it as the first sanity check of a model shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..data.batch import MicroBatch
from ..diffusion import NoiseConfig, Objective, PretrainObjective, StepStats
from ..diffusion.noise import EVAL_STEP
from ..model import ModelConfig, build_model


def train_plain(model: torch.nn.Module, objective: Objective, batches: Callable[[int], list[MicroBatch]], steps: int,
                optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float], grad_clip: float = 1.0,
                start: int = 0, on_step: Optional[Callable[[int, float, StepStats], None]] = None) -> list[float]:
    """Train steps [start, start + steps); each step's loss is the mean of its micro-batches' losses.

    Gradients of the micro-batches of a step are accumulated (each loss divided by their number,
    as DeepSpeed does), clipped to grad_clip (0: no clipping), then one optimizer step. Only the
    parameters that require gradients train and count in the clipping norm, as in the engine: with
    a peft-wrapped model (LoRA) the adapters, the reference of the LoRA trainer's tests.
    """
    losses = []
    model.train()
    for step in range(start, start + steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        micro = batches(step)
        total, stats = 0.0, StepStats.zeros()
        for mb in micro:
            loss, figures = objective.loss(model, mb, step)
            (loss / len(micro)).backward()
            total += loss.item()
            stats = stats + figures
        if grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        optimizer.step()
        losses.append(total / len(micro))
        if on_step is not None:
            on_step(step, losses[-1], stats)
    return losses


@dataclass
class OverfitResult:
    losses: list[float]  # training loss per step (noisy: fresh t and mask every step)
    accuracies: list[float]
    eval_before: float  # loss averaged over fixed noise draws, before and after training
    eval_after: float
    seconds: float


def overfit_one_batch(cfg: ModelConfig, steps: int = 200, batch_size: int = 4, seq_len: int = 64, lr: float = 1e-3,
                      seed: int = 0, log_every: int = 0, eval_draws: int = 8) -> OverfitResult:
    """Overfit one fixed batch of random tokens with the pre-training objective.

    If model, masking and loss are wired correctly, the loss on a single repeated batch falls far
    below its starting value within a few dozen steps. The 1/t weighting makes single-step losses
    very noisy, so the verdict compares the mean over fixed noise draws before and after.
    """
    torch.manual_seed(seed)
    model = build_model(cfg)
    mask_id = cfg.vocab_size - 1  # no tokenizer here: reserve the last id, never drawn as data
    x0 = torch.randint(0, cfg.vocab_size - 1, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    batch = MicroBatch(x0, list(range(batch_size)))
    # Fresh noise every step (the step is part of the noise key); no random-length cut, so that
    # the losses of successive steps are comparable.
    objective = PretrainObjective(mask_id, noise=NoiseConfig(seed=seed, random_length_prob=0.0))

    @torch.no_grad()
    def evaluate() -> float:
        return sum(objective.loss(model, batch, EVAL_STEP + k)[0].item() for k in range(eval_draws)) / eval_draws

    accuracies: list[float] = []

    def on_step(step: int, loss: float, stats: StepStats) -> None:
        accuracies.append(stats.correct.item() / max(stats.masked.item(), 1))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss:8.4f}  masked acc {accuracies[-1]:.3f}", flush=True)

    eval_before = evaluate()
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # Small-t samples carry weight 1/t: clipping keeps their rare huge gradients in check.
    losses = train_plain(model, objective, lambda step: [batch], steps, opt, lambda step: lr, 1.0, on_step=on_step)
    seconds = time.perf_counter() - start
    return OverfitResult(losses, accuracies, eval_before, evaluate(), seconds)
