"""The losses: LLaDA's weighted cross-entropy over masked positions, and the autoregressive baseline's.

Both objectives of LLaDA reduce to one weighted cross-entropy: loss = sum over samples i of w_i
times the sum over i's masked tokens of CE, with w_i set by the forward process (masking.py).
The model computes it in its output head, in chunks of rows, without ever holding the logits of
all masked positions (model/head.py): `model_diffusion_loss` and `model_autoregressive_loss` are
what the objectives train with. `diffusion_loss` and `autoregressive_loss` take full logits
instead (models other than ours, references in tests). `sample_cross_entropy` gives each
sample's sum of CE over its masked positions, differentiable, the term an ELBO estimate of a
preference or RL objective is built from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.head import RowLoss
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


def model_diffusion_loss(model: torch.nn.Module, batch: DiffusionBatch, n_buckets: int = N_BUCKETS) -> DiffusionLoss:
    """Weighted cross-entropy over the masked positions of `batch`, computed by the model's head."""
    rows = model(batch.noisy, doc_ids=batch.doc_ids, logits_mask=batch.positions, targets=batch.row_targets,
                 row_weights=batch.row_weights)
    return _diffusion_figures(rows, batch, n_buckets)


def sample_cross_entropy(model: torch.nn.Module, batch: DiffusionBatch) -> torch.Tensor:
    """(b,) fp32: for each sample, the sum of CE over its masked positions; differentiable for any
    incoming gradient. Times w_i it is the sample's term of the diffusion loss; with the
    likelihood's masking (L / l weights) it is a Monte Carlo ELBO sample."""
    rows = model(batch.noisy, doc_ids=batch.doc_ids, logits_mask=batch.positions, targets=batch.row_targets)
    out = torch.zeros(batch.target.shape[0], dtype=rows.ce.dtype, device=rows.ce.device)
    return out.index_add(0, batch.row_samples, rows.ce)


def diffusion_loss(logits: torch.Tensor, batch: DiffusionBatch, n_buckets: int = N_BUCKETS) -> DiffusionLoss:
    """The same loss from full logits: (n_masked, vocab) from ``model(..., logits_mask=batch.masked)``,
    or (b, l, vocab). The cross-entropy is computed in fp32 whatever the logits' dtype."""
    if logits.dim() == 3:
        logits = logits[batch.masked]
    targets = batch.row_targets
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {targets.shape[0]} masked positions")
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    rows = RowLoss((ce * batch.row_weights).sum(), ce, logits.argmax(dim=-1) == targets)
    return _diffusion_figures(rows, batch, n_buckets)


def _diffusion_figures(rows: RowLoss, batch: DiffusionBatch, n_buckets: int) -> DiffusionLoss:
    """The loss and its monitoring figures; only device operations (no host synchronisation)."""
    b = batch.target.shape[0]
    with torch.no_grad():
        ce = rows.ce.detach()
        per_sample = torch.zeros(b, dtype=ce.dtype, device=ce.device).index_add(0, batch.row_samples, ce)
        normalised = per_sample * batch.sample_weight * b
        bucket = (batch.t * n_buckets).long().clamp(0, n_buckets - 1)
        bucket_loss = torch.zeros(n_buckets, dtype=ce.dtype, device=ce.device).index_add(0, bucket, normalised)
        bucket_count = torch.zeros(n_buckets, dtype=torch.long, device=ce.device).index_add(
            0, bucket, torch.ones_like(bucket))
    return DiffusionLoss(rows.loss, batch.masked.sum(), rows.correct.sum(), bucket_loss, bucket_count)


def model_autoregressive_loss(model: torch.nn.Module, tokens: torch.Tensor, doc_ids=None) -> DiffusionLoss:
    """Next-token cross-entropy of the model run with a causal mask (the AR baseline), computed
    by its head: the logit at position i predicts token i + 1, averaged over all b * (l - 1)."""
    b, l = tokens.shape
    n = b * (l - 1)
    device = tokens.device
    positions = (torch.arange(b, device=device)[:, None] * l + torch.arange(l - 1, device=device)[None]).reshape(-1)
    weights = torch.full((n,), 1.0 / max(n, 1), dtype=torch.float32, device=device)
    rows = model(tokens, doc_ids=doc_ids, causal=True, logits_mask=positions, targets=tokens[:, 1:].reshape(-1),
                 row_weights=weights)
    return _autoregressive_figures(rows.loss, n, rows.correct.sum(), device)


def autoregressive_loss(logits: torch.Tensor, tokens: torch.Tensor) -> DiffusionLoss:
    """The same loss from full (b, l, vocab) logits of a causal model.

    Returned in the same container as the diffusion loss so that the loop logs both alike (no
    t-buckets).
    """
    pred, target = logits[:, :-1].float(), tokens[:, 1:]
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
    with torch.no_grad():
        correct = (pred.argmax(-1) == target).sum()
    return _autoregressive_figures(ce, target.numel(), correct, tokens.device)


def _autoregressive_figures(loss: torch.Tensor, n: int, correct: torch.Tensor, device) -> DiffusionLoss:
    empty = torch.zeros(N_BUCKETS, device=device)
    return DiffusionLoss(loss, torch.tensor(n, device=device), correct, empty, empty.long())
