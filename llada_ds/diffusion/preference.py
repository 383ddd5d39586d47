"""VRPO: DPO for a masked diffusion model, on variance-reduced ELBO estimates (LLaDA 1.5).

DPO needs log pi(y | x) of the policy and of a frozen reference for a chosen answer y_w and a
rejected one y_l. A diffusion model has no exact likelihood, so each is replaced by a Monte Carlo
estimate B of its evidence lower bound (Zhu et al. 2025, arXiv:2505.19223):

    score = (B_pi(y_w) - B_ref(y_w)) - (B_pi(y_l) - B_ref(y_l))        loss = -log sigmoid(beta score)

Estimating B adds variance, which the log-sigmoid turns into bias and variance of the loss and its
gradient; the paper bounds both by the variance of the score and lowers it in three ways, all
implemented here:
1. a larger budget: n = `mc_samples` masked samples per estimate;
2. all of it on distinct timesteps: n timesteps with one masked sample each (n_t = n, n_mask = 1);
3. antithetic sampling: the policy's and the reference's estimates of the same answer use the
   same timesteps and masks (one draw, `antithetic=True`; False draws the reference's noise
   independently, the naive estimator, for ablations and for measuring the reduction).

One sample of an answer of L tokens (prompt never masked): a masked count l ~ U{1..L} (l / L is
the timestep), l answer positions masked uniformly at random, and the estimate
(L / l) * sum over the masked positions of log p(token | masked sequence): the form of LLaDA's
likelihood estimator (docs/llada.md, section 7), whose weight L / l is bounded by L, instead of
the 1 / t form with t ~ U(0, 1) (the same bound in expectation). Draws are counter-based
(noise.py): sample j of answer a at optimizer step s comes from the Philox stream keyed
(seed, STREAM_PREFERENCE, s, a n + j), a = 2 g for the chosen answer of global pair g and 2 g + 1
for the rejected one (the rows' sample indices, data/preference.py), so a resumed or resized run
draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.batch import MicroBatch
from ..errors import ConfigError, DataError
from .losses import N_BUCKETS
from .masking import NoiseConfig, check_tokens
from .noise import STREAM_PREFERENCE, STREAM_REFERENCE, draw_answer_masks
from .objectives import StepStats, figure
from .reference import Reference


@dataclass
class ElboSamples:
    """n masked copies of each of R sequences, ready for one forward."""

    noisy: torch.Tensor  # (R n, l) long: copy j of row r at r n + j
    target: torch.Tensor  # (R n, l) clean tokens
    masked: torch.Tensor  # (R n, l) bool: the scored positions
    weight: torch.Tensor  # (R n,) L / l of each copy
    doc_ids: Optional[torch.Tensor]  # (R n, l) padding segment, or None
    rows: int
    n: int


def elbo_samples(x0: torch.Tensor, prompt_lengths: torch.Tensor, doc_ids: Optional[torch.Tensor], keys: Sequence[int],
                 n_times: int, mask_id: int, seed: int, step: int, stream: int = STREAM_PREFERENCE,
                 masks_per_time: int = 1) -> ElboSamples:
    """The masked copies of each row of x0 (prompt, then answer, then optional padding marked by
    doc_ids == 0): n_times timesteps per row, masks_per_time masks per timestep, drawn from the
    keys key * n_times + i (i the timestep)."""
    rows, width = x0.shape
    valid = (doc_ids > 0).sum(1) if doc_ids is not None else torch.full((rows,), width, device=x0.device)
    prompt = prompt_lengths.to(x0.device).reshape(-1)
    answer = (valid - prompt).tolist()
    if any(a <= 0 for a in answer):
        raise DataError(f"a preference sequence has no answer tokens (prompt lengths {prompt.tolist()})")
    draws = draw_answer_masks(seed, stream, step, [int(k) * n_times + i for k in keys for i in range(n_times)],
                              [a for a in answer for _ in range(n_times)], masks_per_time)
    n = n_times * masks_per_time
    masked = torch.zeros(rows * n, width, dtype=torch.bool)
    for d, m in enumerate(draws):
        r, t = divmod(d, n_times)
        first, start = r * n + t * masks_per_time, int(prompt[r])
        masked[first : first + masks_per_time, start : start + m.shape[1]] = torch.from_numpy(m)
    masked = masked.to(x0.device)
    target = x0.repeat_interleave(n, dim=0)
    noisy = torch.where(masked, torch.full_like(target, mask_id), target)
    lengths = torch.tensor([a for a in answer for _ in range(n)], dtype=torch.float64, device=x0.device)
    weight = lengths / masked.sum(1)
    return ElboSamples(noisy, target, masked, weight, None if doc_ids is None else doc_ids.repeat_interleave(n, 0),
                       rows, n)


def elbo_estimates(model, s: ElboSamples) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,) estimates of the ELBO of each row (the mean of its n copies), and the number of
    argmax-correct predictions at the scored positions."""
    # The chunked head (llada_ds/model/head.py): per-row CE without holding every row's logits.
    rows = model(s.noisy, doc_ids=s.doc_ids, logits_mask=s.masked, targets=s.target[s.masked])
    logp = -rows.ce
    copies = s.masked.nonzero()[:, 0]
    per_copy = torch.zeros(s.rows * s.n, dtype=logp.dtype, device=logp.device).index_add(0, copies, logp)
    estimate = (per_copy * s.weight.to(logp.dtype)).view(s.rows, s.n).mean(1)
    return estimate, rows.correct.sum()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair DPO losses -log sigmoid(beta score), scores) from log-likelihood estimates."""
    score = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * score), score


@dataclass(frozen=True)
class VRPOObjective:
    """VRPO on preference micro-batches (data/preference.py: m chosen rows, then the m rejected ones,
    each row's sample index naming its answer)."""

    mask_id: int
    vocab_size: Optional[int]
    noise: NoiseConfig
    reference: Reference
    beta: float = 0.1
    mc_samples: int = 8
    antithetic: bool = True
    kind: str = "vrpo"

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"vrpo.beta={self.beta!r} must be positive")
        if self.mc_samples < 1:
            raise ConfigError(f"vrpo.mc_samples={self.mc_samples!r} must be at least 1")

    def scores(self, model, batch: MicroBatch, step: int) -> dict:
        """The estimates of a micro-batch: policy and reference ELBOs of the chosen and rejected
        answers (the policy's with gradients) and what the figures need."""
        if batch.prompt_lengths is None or batch.tokens.shape[0] % 2:
            raise DataError("the VRPO objective needs preference micro-batches (llada-ds pref-data)")
        check_tokens(batch.tokens, self.mask_id, self.vocab_size, batch.sample_indices)
        m = batch.tokens.shape[0] // 2
        args = (batch.tokens, batch.prompt_lengths, batch.doc_ids, [int(a) for a in batch.sample_indices],
                self.mc_samples, self.mask_id, self.noise.seed, step)
        s = elbo_samples(*args)
        policy, correct = elbo_estimates(model, s)
        ref_s = s if self.antithetic else elbo_samples(*args, stream=STREAM_REFERENCE)
        with torch.no_grad():
            ref, _ = elbo_estimates(self.reference, ref_s)
        return {"policy": policy, "ref": ref, "m": m, "samples": s, "correct": correct}

    def loss(self, model, batch: MicroBatch, step: int) -> tuple[torch.Tensor, StepStats]:
        e = self.scores(model, batch, step)
        m, policy, ref = e["m"], e["policy"], e["ref"]
        losses, score = dpo_loss(policy[:m], policy[m:], ref[:m], ref[m:], self.beta)
        loss = losses.mean()
        device = loss.device
        f64 = lambda v: torch.as_tensor(v, dtype=torch.float64, device=device)  # noqa: E731
        with torch.no_grad():
            reward = self.beta * (policy - ref).detach()  # DPO's implicit rewards
            extra = {"pref_accuracy": figure((score > 0).sum(), m, device),
                     "pref_margin": figure((reward[:m] - reward[m:]).sum(), m, device),
                     "chosen_reward": figure(reward[:m].sum(), m, device),
                     "rejected_reward": figure(reward[m:].sum(), m, device)}
        s = e["samples"]
        zeros = torch.zeros(N_BUCKETS, dtype=torch.float64, device=device)
        stats = StepStats(loss.detach().to(torch.float64), f64(s.masked.sum()), f64(e["correct"]), f64(s.noisy.numel()),
                          f64(batch.padding * s.n), zeros, zeros.clone(), extra=extra)
        return loss, stats
