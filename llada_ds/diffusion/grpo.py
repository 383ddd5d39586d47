"""diffu-GRPO: reinforcement learning with verifiable rewards for a masked diffusion model (d1).

Each optimizer step of the trainer is one round (Zhao et al. 2025, arXiv:2504.12216, "d1"):
1. rollouts: every rank samples G completions of each of its prompts with the project's sampler
   (exact or fast) on the current weights;
2. rewards r_i = reward(prompt, completion, example) and group-relative advantages
   A_i = r_i - mean(r) over the prompt's G completions (divided by std(r) + 1e-4 with
   `scale_rewards`, as the original GRPO; d1 does not);
3. mu (`updates`) optimizer updates on those completions, each minimising
       (1 / G) sum_i (1 / |o_i|) sum_k [ -min(rho_ik A_i, clip(rho_ik, 1 - eps, 1 + eps) A_i)
                                        + beta KL_ik ]
   averaged over prompts, with rho_ik = exp(log pi(o_ik) - log pi_old(o_ik)), pi_old the weights
   the completions were sampled with, and KL_ik = exp(r) - r - 1, r = log pi_ref(o_ik) - log pi(o_ik)
   (the k3 estimator of KL(pi || pi_ref), as d1 and GRPO), over the completion's tokens up to and
   including its first end-of-turn or EOS (|o_i| of them).

The per-token log-probability (d1's one-step estimator): the completion fully masked, each prompt
token masked with probability `prompt_mask_prob`, one forward, log p of each completion token at
its position. A fresh prompt mask per update (d1's random masking) regularises the mu updates on
one batch; within an update the policy, old and reference log-probabilities see the same masked
input (d1 computes the old and reference ones before the updates with the same seeds). With
`loss="wd1"` the ratio-free objective of wd1 (Tang et al. 2025, arXiv:2507.08838) replaces step 3:
    sum_i (w-_i - w+_i) log pi(o_i),  w+ = softmax(A) and w- = softmax(-A) over the group,
with log pi(o_i) the sum of the completion's per-token estimates; it needs neither pi_old nor the
reference.

Noise is counter-based (noise.py): the sampler's generator for prompt g at step s is seeded with
noise_key(seed, STREAM_ROLLOUT, s, g) and samples its G completions as one batch (sample j is row
j), whatever the rank or the number of ranks; the prompt mask of completion c = g G + j in
update k comes from the Philox stream keyed (seed, STREAM_PROMPT_MASK, s, c mu + k). A resumed
or resized run therefore draws the same completions and masks as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..data.tokenizer import Tokenizer
from ..errors import ConfigError
from .fast_sampler import FastConfig, generate_fast
from .losses import N_BUCKETS
from .masking import NoiseConfig
from .noise import STREAM_PROMPT_MASK, STREAM_ROLLOUT, draw_token_masks, noise_key
from .objectives import Prepared, StepStats, figure
from .reference import Reference
from .sampler import SamplerConfig, SpecialTokens, generate, left_pad

LOSSES = ("clip", "wd1")


def group_advantages(rewards: torch.Tensor, generations: int, scale: bool = False) -> torch.Tensor:
    """A_i = r_i - mean of its group of G (consecutive) rewards, divided by the group's standard
    deviation (unbiased) + 1e-4 when `scale`."""
    groups = rewards.view(-1, generations)
    adv = groups - groups.mean(1, keepdim=True)
    if scale:
        adv = adv / (groups.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def clipped_objective(logp: torch.Tensor, old: torch.Tensor, ref: Optional[torch.Tensor], advantages: torch.Tensor,
                      mask: torch.Tensor, clip: float, beta: float) -> dict:
    """diffu-GRPO's loss per completion (its per-token terms averaged over its |o_i| tokens), with
    the per-token KL and whether clipping zeroed the token's gradient. logp, old, ref, mask: (m, n)."""
    ratio = torch.exp(logp - old)
    a = advantages[:, None]
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
    kl = None
    if beta:
        diff = ref - logp
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + beta * kl
    with torch.no_grad():
        clipped = ((ratio < 1 - clip) & (a < 0)) | ((ratio > 1 + clip) & (a > 0))
    return {"loss": (per_token * mask).sum(1) / mask.sum(1), "kl": kl, "clipped": clipped}


def wd1_weights(advantages: torch.Tensor, generations: int) -> torch.Tensor:
    """wd1's per-completion weight w-_i - w+_i (softmax of -A and of A over each group)."""
    groups = advantages.view(-1, generations)
    return (torch.softmax(-groups, 1) - torch.softmax(groups, 1)).reshape(-1)


def stop_index(row: list[int], stops: tuple[int, ...]) -> int:
    """Position of the first stop token of a completion (its length if there is none)."""
    return next((i for i, t in enumerate(row) if t in stops), len(row))


@dataclass
class RolloutBatch:
    """Completions of one micro-batch of an update: prompt (left-padded) + completion per row."""

    tokens: torch.Tensor  # (m, l) long
    doc_ids: Optional[torch.Tensor]  # (m, l): 0 on left padding, 1 elsewhere; None without padding
    scored: torch.Tensor  # (m, l) bool: the completion positions (the last n of every row)
    noisy: torch.Tensor  # (m, l) this update's input: completion masked, prompt partly masked
    completion_mask: torch.Tensor  # (m, n) float: tokens up to and including the first stop
    advantages: torch.Tensor  # (m,)
    weights: torch.Tensor  # (m,) wd1's w- - w+
    old: Optional[torch.Tensor]  # (m, n) log pi_old of this update's input (None: mu = 1, use logp)
    ref: Optional[torch.Tensor]  # (m, n) log pi_ref of this update's input (None: no KL)
    sample_indices: list[int]  # global completion index g G + j

    def to(self, device) -> "RolloutBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return RolloutBatch(*(move(getattr(self, f.name)) if f.name != "sample_indices" else self.sample_indices
                              for f in dataclasses.fields(self)))


def token_logps(model, tokens: torch.Tensor, noisy: torch.Tensor, scored: torch.Tensor,
                doc_ids: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, n) log p of each completion token given the masked input (d1's estimator, one forward,
    through the chunked head: never every token's logits at once), and whether each token is the
    argmax."""
    m = tokens.shape[0]
    rows = model(noisy, doc_ids=doc_ids, logits_mask=scored, targets=tokens[scored])
    return -rows.ce.view(m, -1), rows.correct.view(m, -1)


@dataclass(frozen=True)
class GRPOSettings:
    generations: int = 8  # G: completions per prompt
    updates: int = 1  # mu: optimizer updates per batch of rollouts
    clip: float = 0.2  # epsilon of the clipped ratio
    beta: float = 0.04  # KL coefficient (0: no reference model is needed)
    prompt_mask_prob: float = 0.15  # p_mask of the prompt tokens in the log-probability estimate
    loss: str = "clip"  # clip (diffu-GRPO) | wd1
    scale_rewards: bool = False  # divide advantages by the group's reward std (GRPO) or not (d1)
    log_samples: int = 4  # completions of rank 0 written to the run directory per step

    def __post_init__(self) -> None:
        checks = [(self.generations >= 2, "grpo.generations", self.generations, "must be at least 2"),
                  (self.updates >= 1, "grpo.updates", self.updates, "must be at least 1"),
                  (self.clip > 0, "grpo.clip", self.clip, "must be positive"),
                  (self.beta >= 0, "grpo.beta", self.beta, "must be >= 0"),
                  (0 <= self.prompt_mask_prob < 1, "grpo.prompt_mask_prob", self.prompt_mask_prob, "must be in [0, 1)"),
                  (self.loss in LOSSES, "grpo.loss", self.loss, f"must be one of {', '.join(LOSSES)}"),
                  (self.log_samples >= 0, "grpo.log_samples", self.log_samples, "must be >= 0")]
        for ok, key, value, why in checks:
            if not ok:
                raise ConfigError(f"{key}={value!r} {why}")

    @property
    def needs_reference(self) -> bool:
        return self.loss == "clip" and self.beta > 0


class GRPOObjective:
    """diffu-GRPO (or wd1) on the prompts of data/prompts.py; see the module docstring."""

    kind = "grpo"

    def __init__(self, mask_id: int, vocab_size: Optional[int], noise: NoiseConfig, tokenizer: Tokenizer,
                 reward: Callable[[str, str, dict], float], settings: GRPOSettings, sampler: SamplerConfig,
                 micro_batch: int, reference: Optional[Reference] = None, fast: Optional[FastConfig] = None) -> None:
        if settings.needs_reference and reference is None:
            raise ConfigError(f"grpo.beta={settings.beta} needs a reference model (or set grpo.beta=0)")
        sampler.blocks()  # checks the sampler's settings now, not at the first rollout
        self.mask_id, self.vocab_size, self.noise, self.tokenizer = mask_id, vocab_size, noise, tokenizer
        self.reward, self.settings, self.sampler, self.fast = reward, settings, sampler, fast
        self.micro_batch, self.reference = micro_batch, reference
        self.tokens = SpecialTokens.of(tokenizer.special)
        self.stops = (tokenizer.special.eot, tokenizer.special.eos)

    # -- the rollouts of one step ----------------------------------------------------------------------
    def rollouts(self, model, prompt: list[int], index: int, step: int) -> torch.Tensor:
        """The G completions (G, gen_length) of global prompt `index` at `step`."""
        cfg = dataclasses.replace(self.sampler, seed=noise_key(self.noise.seed, STREAM_ROLLOUT, step, index))
        group = [prompt] * self.settings.generations
        if self.fast is None:
            return generate(model, group, cfg, self.tokens)
        return generate_fast(model, group, cfg, self.tokens, self.fast)[0]

    @torch.no_grad()
    def prepare(self, model, batches: list, step: int) -> Prepared:
        """Rollouts, rewards and advantages of this rank's prompts, and the `updates` optimizer
        updates on them (each over the same micro-batches, with its own prompt masks)."""
        s, G = self.settings, self.settings.generations
        (batch,) = batches
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        rows, rewards, samples, error = [], [], [], None
        for prompt, index, text, record in zip(batch.prompts, batch.indices, batch.texts, batch.records):
            out = self.rollouts(model, prompt, index, step).tolist()
            for j, completion in enumerate(out):
                length = stop_index(completion, self.stops)
                answer = self.tokenizer.decode(completion[:length])
                try:
                    rewards.append(float(self.reward(text, answer, record)))
                except Exception as exc:  # noqa: BLE001  (user code: reported, all ranks stop)
                    error = error or f"the reward function failed on global prompt {index}, sample {j}: {exc!r}"
                    rewards.append(float("nan"))
                rows.append((prompt, completion, min(length + 1, len(completion)), index * G + j))
                if len(samples) < s.log_samples:
                    # "step" counts from 1, as in metrics.jsonl: the optimizer step these rollouts feed
                    samples.append({"step": step + 1, "prompt_index": index, "sample": j, "prompt": text,
                                    "completion": answer, "reward": rewards[-1]})
        r = torch.tensor(rewards, dtype=torch.float64)
        adv = group_advantages(r, G, s.scale_rewards)
        weights = wd1_weights(adv, G) * G  # mean over completions of G (w- - w+) log pi = mean over groups
        for sample in samples:
            sample["advantage"] = float(adv[batch.indices.index(sample["prompt_index"]) * G + sample["sample"]])
        chunks = [range(i, min(i + self.micro_batch, len(rows))) for i in range(0, len(rows), self.micro_batch)]
        updates = [[] for _ in range(s.updates)]
        for chunk in chunks:
            base = self._collate([rows[i] for i in chunk], adv[list(chunk)], weights[list(chunk)], device)
            for k in range(s.updates):
                noisy = self._mask_prompts(base, step, k)
                old = ref = None
                if s.loss == "clip" and s.updates > 1:
                    old = token_logps(model, base.tokens, noisy, base.scored, base.doc_ids)[0]
                if s.needs_reference:
                    ref = token_logps(self.reference, base.tokens, noisy, base.scored, base.doc_ids)[0]
                updates[k].append(dataclasses.replace(base, noisy=noisy, old=old, ref=ref))
        if was_training:
            model.train()
        groups = r.view(-1, G)
        std = groups.std(1)
        lengths = torch.tensor([length for _, _, length, _ in rows], dtype=torch.float64)
        zeros = torch.zeros((), dtype=torch.float64, device=device)
        buckets = torch.zeros(N_BUCKETS, dtype=torch.float64, device=device)
        figures = StepStats(zeros, zeros, zeros, zeros, zeros, buckets, buckets.clone(), extra={
            "reward": figure(r.sum(), len(r), device), "reward_std": figure(std.sum(), len(std), device),
            "zero_std_groups": figure((std < 1e-6).sum(), len(std), device),
            "advantage_abs": figure(adv.abs().sum(), len(adv), device),
            "completion_length": figure(lengths.sum(), len(lengths), device)})
        return Prepared(updates, figures, samples, error)

    def _collate(self, rows: list, adv: torch.Tensor, weights: torch.Tensor, device) -> RolloutBatch:
        """Prompts left-padded (padding its own attention segment) followed by the completions."""
        prompts, valid = left_pad([p for p, _, _, _ in rows], self.tokens.pad)
        n = len(rows[0][1])
        completions = torch.tensor([c for _, c, _, _ in rows], dtype=torch.long)
        tokens = torch.cat([prompts, completions], 1).to(device)
        doc_ids = None if valid is None else torch.cat([valid, torch.ones_like(completions, dtype=torch.bool)], 1)
        scored = torch.zeros(tokens.shape, dtype=torch.bool)
        scored[:, -n:] = True
        mask = (torch.arange(n)[None, :] < torch.tensor([length for _, _, length, _ in rows])[:, None]).float()
        return RolloutBatch(tokens, None if doc_ids is None else doc_ids.long().to(device), scored.to(device),
                            tokens, mask.to(device), adv.to(device, torch.float32), weights.to(device, torch.float32),
                            None, None, [c for _, _, _, c in rows])

    def _mask_prompts(self, base: RolloutBatch, step: int, update: int) -> torch.Tensor:
        """This update's input: every completion token masked, each prompt token masked with
        probability prompt_mask_prob (keyed by completion and update, padding left alone)."""
        n = int(base.scored[0].sum())
        prompt_lens = ((base.doc_ids > 0).sum(1) - n if base.doc_ids is not None
                       else torch.full((base.tokens.shape[0],), base.tokens.shape[1] - n)).tolist()
        keys = [c * self.settings.updates + update for c in base.sample_indices]
        drawn = draw_token_masks(self.noise.seed, STREAM_PROMPT_MASK, step, keys, prompt_lens,
                                 self.settings.prompt_mask_prob)
        masked = base.scored.clone().cpu()
        width = base.tokens.shape[1]
        for i, d in enumerate(drawn):
            masked[i, width - n - len(d) : width - n] = torch.from_numpy(d)
        masked = masked.to(base.tokens.device)
        return torch.where(masked, torch.full_like(base.tokens, self.mask_id), base.tokens)

    # -- one micro-batch of an update ------------------------------------------------------------------
    def loss(self, model, batch: RolloutBatch, step: int) -> tuple[torch.Tensor, StepStats]:
        s = self.settings
        logp, correct = token_logps(model, batch.tokens, batch.noisy, batch.scored, batch.doc_ids)
        mask = batch.completion_mask
        device = logp.device
        tokens = mask.sum()
        extra = {}
        if s.loss == "wd1":
            loss = (batch.weights * (logp * mask).sum(1)).mean()
        else:
            old = batch.old if batch.old is not None else logp.detach()
            out = clipped_objective(logp, old, batch.ref, batch.advantages, mask, s.clip, s.beta)
            loss = out["loss"].mean()
            extra["clip_fraction"] = figure((out["clipped"] * mask).sum(), tokens, device)
            if out["kl"] is not None:
                extra["kl"] = figure((out["kl"].detach() * mask).sum(), tokens, device)
        f64 = lambda v: torch.as_tensor(v, dtype=torch.float64, device=device).detach()  # noqa: E731
        zeros = torch.zeros(N_BUCKETS, dtype=torch.float64, device=device)
        stats = StepStats(f64(loss), f64(tokens), f64((correct.float() * mask).sum()),
                          f64(batch.noisy.numel()), f64(0), zeros, zeros.clone(), extra=extra)
        return loss, stats
