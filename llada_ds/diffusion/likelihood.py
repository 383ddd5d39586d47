"""Monte Carlo conditional log-likelihood of an answer given a prompt (docs/llada.md, likelihood).

log p(a | p) >= E_l E_mask[-(L / l) sum over the l masked answer positions of CE], with l drawn
from {1..L}, the l positions uniformly among the answer's L (never the prompt). The l of a batch
of b samples are stratified: l_i = ((k + i L / b rounded) - 1) mod L + 1 for one uniform k, which
covers {1..L} evenly and lowers the variance (as LLaDA's evaluation code). mc_num samples are
averaged; all draws come from a generator seeded by `seed`, so estimates are reproducible.
Classifier-free guidance (cfg_scale > 0) combines the logits as the sampler does (guided_logits:
the unconditional pass sees the prompt replaced by masks).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .sampler import guided_logits, logits_fn


def _stratified_masks(b: int, answer_len: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, L) masks over the answer and the masked counts l (b,)."""
    k = int(torch.randint(1, answer_len + 1, (), generator=gen))
    l = torch.round(torch.linspace(float(k), k + (b - 1) * (answer_len / b), steps=b)).long()
    l = (l - 1) % answer_len + 1
    masks = torch.arange(answer_len)[None, :].repeat(b, 1) < l[:, None]
    for i in range(b):
        masks[i] = masks[i][torch.randperm(answer_len, generator=gen)]
    return masks, l


@torch.no_grad()
def log_likelihood(model_or_fn, prompt: Sequence[int], answer: Sequence[int], mask_id: int, mc_num: int = 128,
                   batch_size: int = 16, cfg_scale: float = 0.0, seed: int = 0) -> float:
    """The estimate of log p(answer | prompt) from mc_num masked samples, batch_size per forward."""
    if not answer:
        raise ConfigError("the answer is empty: a likelihood needs at least one answer token")
    if mc_num <= 0 or batch_size <= 0:
        raise ConfigError(f"mc_num={mc_num} and batch_size={batch_size} must be positive")
    if mc_num % batch_size:
        raise ConfigError(f"mc_num={mc_num} must be a multiple of batch_size={batch_size}")
    if cfg_scale < 0:
        raise ConfigError(f"cfg_scale={cfg_scale} must be 0 (no guidance) or positive")
    fn = model_or_fn if not isinstance(model_or_fn, torch.nn.Module) else logits_fn(model_or_fn)
    device = next(model_or_fn.parameters()).device if isinstance(model_or_fn, torch.nn.Module) else "cpu"
    seq = torch.tensor(list(prompt) + list(answer), dtype=torch.long, device=device)[None].repeat(batch_size, 1)
    p_len, a_len = len(prompt), len(answer)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(mc_num // batch_size):
        masks, l = _stratified_masks(batch_size, a_len, gen)
        is_mask = torch.cat([torch.zeros(batch_size, p_len, dtype=torch.bool), masks], dim=1).to(device)
        noisy = torch.where(is_mask, torch.full_like(seq, mask_id), seq)
        logits = guided_logits(fn, noisy, None, p_len, mask_id, cfg_scale)
        ce = F.cross_entropy(logits[is_mask].float(), seq[is_mask], reduction="none")
        weight = (a_len / l.to(device).float())[:, None].expand(batch_size, seq.shape[1])[is_mask]
        total += (ce * weight).sum().item() / batch_size
    return -total / (mc_num // batch_size)
