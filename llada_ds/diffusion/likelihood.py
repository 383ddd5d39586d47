"""Monte Carlo conditional log-likelihood of an answer given a prompt (docs/llada.md, likelihood).

log p(a | p) >= E_l E_mask[-(L / l) sum over the l masked answer positions of CE], with l drawn
from {1..L}, the l positions uniformly among the answer's L (never the prompt). The l of a group
of b samples are stratified: l_i = ((k + i L / b rounded) - 1) mod L + 1 for one uniform k, which
covers {1..L} evenly and lowers the variance (as LLaDA's evaluation code). mc_num samples are
averaged; all draws come from a generator seeded by `seed`, so estimates are reproducible.
Classifier-free guidance (cfg_scale > 0) combines the logits as the sampler does (the
unconditional pass sees the prompt replaced by masks).

Batching (`log_likelihoods`): an evaluation asks for thousands of (prompt, answer) pairs, each
with mc_num samples. Each request's samples are drawn exactly as it would be alone (its own
generator seeded by `seed`, the same order of draws), so a request's estimate does not depend on
what it is batched with; then the samples of all requests are sorted by length and scored in
forwards of up to `token_budget` tokens (rows x padded length). Identical samples (frequent for
short answers: all of them for a one-token answer) are scored once. Rows are right-padded (positions
unchanged) and the padding is its own attention segment, so real tokens never see it. With our
model the output head runs on the masked positions only, in chunks (model/head.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import LLaDAModel
from .sampler import logits_fn

Progress = Callable[[int, int], None]  # (done, total)

# Tokens (rows x padded length) per forward: a few sequences of a few thousand tokens, or many
# short multiple-choice rows; raise it on a large GPU.
TOKEN_BUDGET = 8192


def _stratified_masks(b: int, answer_len: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, L) masks over the answer and the masked counts l (b,)."""
    k = int(torch.randint(1, answer_len + 1, (), generator=gen))
    l = torch.round(torch.linspace(float(k), k + (b - 1) * (answer_len / b), steps=b)).long()
    l = (l - 1) % answer_len + 1
    masks = torch.arange(answer_len)[None, :].repeat(b, 1) < l[:, None]
    for i in range(b):
        masks[i] = masks[i][torch.randperm(answer_len, generator=gen)]
    return masks, l


@dataclass
class _Sample:
    request: int
    tokens: torch.Tensor  # (len,) the noisy sequence: prompt, then the answer with l positions masked
    masked: torch.Tensor  # (k,) positions of the masked answer tokens
    targets: torch.Tensor  # (k,) their clean tokens
    weight: float  # L / l
    prompt_len: int
    value: float = 0.0  # sum over the masked positions of (L / l) CE, once scored

    @property
    def key(self) -> tuple:
        """What its score depends on (the weight follows from the number of masked positions)."""
        return (self.tokens.numpy().tobytes(), self.masked.numpy().tobytes(), self.targets.numpy().tobytes(),
                self.prompt_len)


def _check(mc_num: int, batch_size: int, cfg_scale: float, token_budget: int) -> None:
    if mc_num <= 0 or batch_size <= 0:
        raise ConfigError(f"mc_num={mc_num} and batch_size={batch_size} must be positive")
    if mc_num % batch_size:
        raise ConfigError(f"mc_num={mc_num} must be a multiple of batch_size={batch_size}")
    if cfg_scale < 0:
        raise ConfigError(f"cfg_scale={cfg_scale} must be 0 (no guidance) or positive")
    if token_budget <= 0:
        raise ConfigError(f"token_budget={token_budget} must be positive")


def _draw(requests: Sequence[tuple[Sequence[int], Sequence[int]]], mask_id: int, mc_num: int, batch_size: int,
          seed: int) -> list[_Sample]:
    """Every request's samples, drawn as the request alone would draw them."""
    samples = []
    for r, (prompt, answer) in enumerate(requests):
        if not answer:
            raise ConfigError(f"request {r}: the answer is empty: a likelihood needs at least one answer token")
        seq = torch.tensor(list(prompt) + list(answer), dtype=torch.long)
        p_len, a_len = len(prompt), len(answer)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(mc_num // batch_size):
            masks, l = _stratified_masks(batch_size, a_len, gen)
            for i in range(batch_size):
                masked = masks[i].nonzero().squeeze(1) + p_len
                noisy = seq.clone()
                noisy[masked] = mask_id
                samples.append(_Sample(r, noisy, masked, seq[masked], a_len / float(l[i]), p_len))
    return samples


def _batches(samples: list[_Sample], token_budget: int) -> list[list[_Sample]]:
    """Samples sorted by length, cut into forwards of at most token_budget padded tokens."""
    ordered = sorted(samples, key=lambda s: len(s.tokens))
    out: list[list[_Sample]] = []
    for s in ordered:  # ascending lengths: the newest sample is the longest of its batch
        if out and (len(out[-1]) + 1) * len(s.tokens) <= token_budget:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def _score(model_or_fn, batch: list[_Sample], mask_id: int, cfg_scale: float, device) -> list[float]:
    """sum over each sample's masked positions of (L / l) CE, one forward (of twice the rows with
    guidance)."""
    longest = max(len(s.tokens) for s in batch)
    x = torch.full((len(batch), longest), mask_id, dtype=torch.long)
    valid = torch.zeros(len(batch), longest, dtype=torch.bool)
    rows, cols, targets, weights = [], [], [], []
    for i, s in enumerate(batch):
        x[i, : len(s.tokens)] = s.tokens
        valid[i, : len(s.tokens)] = True
        rows.append(torch.full_like(s.masked, i))
        cols.append(s.masked)
        targets.append(s.targets)
        weights.append(torch.full(s.masked.shape, s.weight, dtype=torch.float32))
    row, col = torch.cat(rows), torch.cat(cols)
    positions = (row * longest + col).to(device)
    targets, weights = torch.cat(targets).to(device), torch.cat(weights).to(device)
    padded = not bool(valid.all())
    x, valid = x.to(device), valid.to(device)
    if cfg_scale > 0:
        uncond = x.clone()
        for i, s in enumerate(batch):
            uncond[i, : s.prompt_len] = mask_id
    ours = isinstance(model_or_fn, LLaDAModel)
    if ours and cfg_scale <= 0:
        doc_ids = valid.long() if padded else None
        ce = model_or_fn(x, doc_ids=doc_ids, logits_mask=positions, targets=targets).ce
    else:
        if ours:  # logits at the masked positions only
            doc_ids = torch.cat([valid, valid]).long() if padded else None
            both = model_or_fn(torch.cat([x, uncond]), doc_ids=doc_ids,
                               logits_mask=torch.cat([positions, positions + x.numel()]))
            cond, unc = both.chunk(2)
        else:
            fn = model_or_fn if not isinstance(model_or_fn, torch.nn.Module) else logits_fn(model_or_fn)
            v = valid if padded else None
            if cfg_scale > 0:
                full = fn(torch.cat([x, uncond]), None if v is None else torch.cat([v, v]))
                cond, unc = (t.reshape(-1, t.shape[-1])[positions] for t in full.chunk(2))
            else:
                cond = fn(x, v)
                cond = cond.reshape(-1, cond.shape[-1])[positions]
        logits = cond if cfg_scale <= 0 else unc + (cfg_scale + 1) * (cond - unc)
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
    per_sample = torch.zeros(len(batch), dtype=torch.float32, device=ce.device)
    return per_sample.index_add(0, row.to(ce.device), ce * weights).tolist()


def _device(model_or_fn):
    return next(model_or_fn.parameters()).device if isinstance(model_or_fn, torch.nn.Module) else "cpu"


@torch.no_grad()
def log_likelihoods(model_or_fn, requests: Sequence[tuple[Sequence[int], Sequence[int]]], mask_id: int,
                    mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0, seed: int = 0,
                    token_budget: int = TOKEN_BUDGET, progress: Optional[Progress] = None) -> list[float]:
    """The estimate of log p(answer | prompt) for each (prompt, answer) request.

    model_or_fn: our model, a Hugging Face style model (`.logits`), or a function (tokens, valid
    mask or None) -> logits. batch_size: samples are stratified in groups of this size (in
    LLaDA's evaluation code it is also the forward batch). token_budget: tokens per forward.
    progress: called after each forward with (samples scored so far, samples to score).
    """
    _check(mc_num, batch_size, cfg_scale, token_budget)
    device = _device(model_or_fn)
    samples = _draw(requests, mask_id, mc_num, batch_size, seed)
    # Identical samples (same sequence, same masked positions: frequent for short answers, all of
    # them for a one-token answer) are scored once; each copy counts in its request's average.
    unique: dict[tuple, _Sample] = {}
    for s in samples:
        unique.setdefault(s.key, s)
    done, todo = 0, len(unique)
    for batch in _batches(list(unique.values()), token_budget):
        for s, value in zip(batch, _score(model_or_fn, batch, mask_id, cfg_scale, device)):
            s.value = value
        done += len(batch)
        if progress is not None:
            progress(done, todo)
    totals = [0.0] * len(requests)
    for s in samples:  # in each request's draw order
        value = unique[s.key].value
        totals[s.request] += value / batch_size
    return [-t / (mc_num // batch_size) for t in totals]


def log_likelihood(model_or_fn, prompt: Sequence[int], answer: Sequence[int], mask_id: int, mc_num: int = 128,
                   batch_size: int = 16, cfg_scale: float = 0.0, seed: int = 0,
                   token_budget: int = TOKEN_BUDGET) -> float:
    """The estimate of log p(answer | prompt) from mc_num masked samples (see log_likelihoods)."""
    return log_likelihoods(model_or_fn, [(prompt, answer)], mask_id, mc_num, batch_size, cfg_scale, seed,
                           token_budget)[0]


@torch.no_grad()
def greedy_matches(model_or_fn, requests: Sequence[tuple[Sequence[int], Sequence[int]]], mask_id: int,
                   token_budget: int = TOKEN_BUDGET, progress: Optional[Progress] = None) -> list[bool]:
    """For each (prompt, answer): does one forward with the whole answer masked predict it token for
    token (argmax)? The diffusion analogue of greedy decoding (lm-eval's is_greedy); batched.
    progress: as for log_likelihoods (one sample per request)."""
    samples = []
    for r, (prompt, answer) in enumerate(requests):
        seq = torch.tensor(list(prompt) + [mask_id] * len(answer), dtype=torch.long)
        masked = torch.arange(len(prompt), len(seq))
        samples.append(_Sample(r, seq, masked, torch.tensor(list(answer), dtype=torch.long), 1.0, len(prompt)))
    out = [True] * len(requests)
    device = _device(model_or_fn)
    fn = model_or_fn if not isinstance(model_or_fn, torch.nn.Module) else logits_fn(model_or_fn)
    scored = [s for s in samples if len(s.masked)]
    done = 0
    for batch in _batches(scored, token_budget):
        longest = max(len(s.tokens) for s in batch)
        x = torch.full((len(batch), longest), mask_id, dtype=torch.long)
        valid = torch.zeros(len(batch), longest, dtype=torch.bool)
        for i, s in enumerate(batch):
            x[i, : len(s.tokens)], valid[i, : len(s.tokens)] = s.tokens, True
        row = torch.cat([torch.full_like(s.masked, i) for i, s in enumerate(batch)])
        positions = (row * longest + torch.cat([s.masked for s in batch])).to(device)
        targets = torch.cat([s.targets for s in batch]).to(device)
        x, v = x.to(device), (None if bool(valid.all()) else valid.to(device))
        if isinstance(model_or_fn, LLaDAModel):
            correct = model_or_fn(x, doc_ids=None if v is None else v.long(), logits_mask=positions,
                                  targets=targets).correct
        else:
            logits = fn(x, v)
            correct = logits.reshape(-1, logits.shape[-1])[positions].argmax(-1) == targets
        wrong = torch.zeros(len(batch), dtype=torch.long, device=correct.device).index_add(
            0, row.to(correct.device), (~correct).long()).tolist()
        for s, n in zip(batch, wrong):
            out[s.request] = n == 0
        done += len(batch)
        if progress is not None:
            progress(done, len(scored))
    return out
