"""Overfit one fixed batch with the pre-training objective: the first sanity check of a model.

If model, masking and loss are wired correctly, the diffusion loss on a single repeated batch
falls far below its starting value within a few dozen steps. It is also the demo until the
training loop lands. Plain single-process PyTorch, no DeepSpeed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .diffusion import NoiseConfig, diffusion_loss, pretrain_batch
from .diffusion.noise import EVAL_STEP
from .model import ModelConfig, build_model



@dataclass
class OverfitResult:
    losses: list[float]  # training loss per step (noisy: fresh t and mask every step)
    accuracies: list[float]
    eval_before: float  # loss averaged over fixed noise draws, before and after training
    eval_after: float
    seconds: float


def overfit_one_batch(
    cfg: ModelConfig, steps: int = 200, batch_size: int = 4, seq_len: int = 64, lr: float = 1e-3,
    seed: int = 0, log_every: int = 0, eval_draws: int = 8,
) -> OverfitResult:
    torch.manual_seed(seed)
    model = build_model(cfg)
    mask_id = cfg.vocab_size - 1  # no tokenizer here: reserve the last id, never drawn as data
    data = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, cfg.vocab_size - 1, (batch_size, seq_len), generator=data)
    indices = list(range(batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # Fresh noise every step (the step is part of the noise key); no random-length cut, so that
    # the losses of successive steps are comparable.
    noise = NoiseConfig(seed=seed, random_length_prob=0.0)

    def evaluate() -> float:
        # The 1/t weighting makes single-step losses very noisy; average fixed draws instead.
        with torch.no_grad():
            total = 0.0
            for k in range(eval_draws):
                batch = pretrain_batch(x0, indices, EVAL_STEP + k, mask_id, noise)
                total += diffusion_loss(model(batch.noisy, logits_mask=batch.masked), batch).loss.item()
        return total / eval_draws

    eval_before = evaluate()
    losses, accuracies = [], []
    start = time.perf_counter()
    for step in range(steps):
        batch = pretrain_batch(x0, indices, step, mask_id, noise)
        out = diffusion_loss(model(batch.noisy, logits_mask=batch.masked), batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        # Small-t samples carry weight 1/t: clipping keeps their rare huge gradients in check.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        accuracies.append(out.accuracy)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:8.4f}  masked acc {accuracies[-1]:.3f}", flush=True)
    seconds = time.perf_counter() - start
    return OverfitResult(losses, accuracies, eval_before, evaluate(), seconds)
