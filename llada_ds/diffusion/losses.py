"""The losses: LLaDA's weighted cross-entropy over masked positions, and the autoregressive baseline's.

Both objectives of LLaDA reduce to one weighted cross-entropy: loss = sum over samples i of w_i
times the sum over i's masked tokens of CE, with w_i set by the forward process (masking.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .masking import DiffusionBatch

N_BUCKETS = 4  # t-buckets [k/K, (k+1)/K) the losses are monitored by


@dataclass
class DiffusionLoss:
    loss: torch.Tensor  # scalar, differentiable
    n_masked: torch.Tensor  # masked tokens scored
    n_correct: torch.Tensor  # of which the argmax prediction is right (masked-token accuracy)
    # Monitoring by noise level: per-sample normalised losses (b * w_i * sum CE) summed by
    # t-bucket [k/K, (k+1)/K), with the sample counts; plain sums so ranks can all-reduce them.
    bucket_loss: torch.Tensor  # (K,)
    bucket_count: torch.Tensor  # (K,)

    @property
    def accuracy(self) -> float:
        return float(self.n_correct) / max(int(self.n_masked), 1)


def diffusion_loss(logits: torch.Tensor, batch: DiffusionBatch, n_buckets: int = N_BUCKETS) -> DiffusionLoss:
    """Weighted cross-entropy over masked positions.

    logits: (n_masked, vocab) from ``model(..., logits_mask=batch.masked)``, or (b, l, vocab).
    The cross-entropy is computed in fp32 whatever the logits' dtype.
    """
    if logits.dim() == 3:
        logits = logits[batch.masked]
    targets = batch.target[batch.masked]
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {targets.shape[0]} masked positions")
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    b = batch.target.shape[0]
    rows = batch.masked.nonzero()[:, 0]
    per_sample = torch.zeros(b, dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    loss = (per_sample * batch.sample_weight).sum()
    with torch.no_grad():
        n_correct = (logits.argmax(dim=-1) == targets).sum()
        normalised = per_sample.detach() * batch.sample_weight * b
        bucket = (batch.t * n_buckets).long().clamp(0, n_buckets - 1)
        bucket_loss = torch.zeros(n_buckets, dtype=ce.dtype, device=ce.device).index_add(0, bucket, normalised)
        bucket_count = torch.bincount(bucket, minlength=n_buckets)
    return DiffusionLoss(loss, batch.masked.sum(), n_correct, bucket_loss, bucket_count)


def autoregressive_loss(logits: torch.Tensor, tokens: torch.Tensor) -> DiffusionLoss:
    """Next-token cross-entropy of a causal model (the AR baseline): logits at i predict token i+1.

    Averaged over all b * (l - 1) predicted positions; accuracy over the same positions. Returned
    in the same container as the diffusion loss so that the loop logs both alike (no t-buckets).
    """
    pred, target = logits[:, :-1].float(), tokens[:, 1:]
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
    with torch.no_grad():
        n = torch.tensor(target.numel(), device=tokens.device)
        correct = (pred.argmax(-1) == target).sum()
        empty = torch.zeros(N_BUCKETS, device=tokens.device)
    return DiffusionLoss(ce, n, correct, empty, empty.long())
