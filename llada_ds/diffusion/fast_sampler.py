"""A faster, approximate LLaDA sampler: key/value caching and confidence-threshold decoding.

Every exact step runs the model on the whole canvas. Within a block only the block's tokens change,
so (as Fast-dLLM observed) the keys and values of the other positions change little:
- cache="prefix": at each block boundary one full forward computes every position's keys/values;
  the following steps of the block run only the block and the (masked) suffix, attending to the
  cached prefix (prompt + finished blocks).
- cache="dual": the suffix's keys/values are cached too; a step runs only the block's tokens.
- threshold=t: a step reveals every masked token of the block whose confidence exceeds t (at least
  the most confident one) instead of the fixed per-step count, so easy spans finish in one step.
cache="none" with no threshold is the exact sampler's algorithm at temperature 0 (tested).

Batches with different prompt lengths are left-padded; the padding is masked out of every
attention, cached keys included (each cached key carries its validity), so every row of a batch
gets what it would get alone. Classifier-free guidance is only available without a cache. Only
the generated span is decoded (mask tokens placed inside a prompt stay as they are, whereas the
exact sampler may fill them). Runs on SDPA or the eager kernel (auto/flash switch to SDPA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..model.transformer import KVCache, LLaDAModel
from .sampler import SamplerConfig, SpecialTokens, add_gumbel_noise, left_pad, reveal_counts


@dataclass(frozen=True)
class FastConfig:
    cache: str = "prefix"  # none | prefix | dual
    threshold: Optional[float] = None

    def __post_init__(self) -> None:
        if self.cache not in ("none", "prefix", "dual"):
            raise ValueError(f"cache={self.cache!r} is not none, prefix or dual")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1)")


@torch.no_grad()
def generate_fast(model: LLaDAModel, prompts: Sequence[Sequence[int]] | torch.Tensor, cfg: SamplerConfig,
                  tokens: SpecialTokens, fast: FastConfig = FastConfig(),
                  on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> tuple[torch.Tensor, int]:
    """(generated tokens (batch, gen_length), number of model forwards)."""
    if not isinstance(model, LLaDAModel):
        raise TypeError("the fast sampler needs llada_ds's model (it reads and feeds its key/value cache)")
    if cfg.cfg_scale > 0 and fast.cache != "none":
        raise ValueError("classifier-free guidance is not supported with a key/value cache; use cache='none'")
    if model.config.attention in ("auto", "flash"):
        # Cached keys need a key mask, which flash-attn (what auto picks on GPUs) cannot take: run
        # this call on SDPA and give the model its own setting back afterwards.
        original = model.config
        model.config = original.replace(attention="sdpa")
        try:
            return generate_fast(model, prompts, cfg, tokens, fast, on_step)
        finally:
            model.config = original
    block, n_blocks, steps_per_block = cfg.blocks()
    device = next(model.parameters()).device
    if torch.is_tensor(prompts):
        prompts = prompts.tolist()
    prompt, valid = left_pad(prompts, tokens.pad, device)
    b, p_len = prompt.shape
    total = p_len + cfg.gen_length
    x = torch.full((b, total), tokens.mask, dtype=torch.long, device=device)
    x[:, :p_len] = prompt
    if valid is not None:
        valid = torch.cat([valid, torch.ones(b, cfg.gen_length, dtype=torch.bool, device=device)], dim=1)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    forwards, step = 0, 0
    positions = torch.arange(total, device=device)
    for k in range(n_blocks):
        start, end = p_len + k * block, p_len + (k + 1) * block
        counts = reveal_counts(x[:, start:end] == tokens.mask, steps_per_block)
        cache, q0, q1 = None, 0, total
        i = 0
        # Count mode runs exactly the exact sampler's steps; threshold mode until the block is full.
        while (i < steps_per_block) if fast.threshold is None else bool((x[:, start:end] == tokens.mask).any()):
            if cache is None:
                collect = [] if fast.cache != "none" else None
                logits = _full_logits(model, x, valid, cfg, tokens, collect)
                forwards += 1 + (cfg.cfg_scale > 0)
                if collect:
                    full = KVCache([kv[0] for kv in collect], [kv[1] for kv in collect], valid)
                    if fast.cache == "prefix":
                        cache, (q0, q1) = full.select(positions[:start]), (start, total)
                    else:
                        cache, (q0, q1) = full.select(torch.cat([positions[:start], positions[end:]])), (start, end)
                logits = logits[:, start:end]
            else:
                sub_valid = None if valid is None else valid[:, q0:q1]
                logits = model(x[:, q0:q1], position_ids=positions[q0:q1], past=cache, key_valid=sub_valid)
                logits = logits[:, start - q0 : end - q0]
                forwards += 1
            if fast.cache == "none":
                cache = None  # recompute everything at every step
            if cfg.forbid_eos:
                logits[:, :, tokens.eos] = -torch.inf
            if fast.threshold is not None:
                # Threshold mode loops until the block is full: a "mask" candidate would never fill it.
                logits[:, :, tokens.mask] = -torch.inf
            current = x[:, start:end]
            masked = current == tokens.mask
            noisy = add_gumbel_noise(logits, cfg.temperature, gen)
            x0 = noisy.argmax(dim=-1)
            if cfg.eot_zero_confidence:  # as the exact sampler (and the published one)
                noisy[:, :, tokens.eos] = -torch.inf
                logits[:, :, tokens.eot] = -torch.inf
            if cfg.remasking == "low_confidence":
                conf = torch.gather(F.softmax(logits, dim=-1), -1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape, device=device, generator=gen)
            x0 = torch.where(masked, x0, current)
            conf = torch.where(masked, conf, torch.tensor(-torch.inf, dtype=conf.dtype, device=device))
            reveal = torch.zeros_like(masked)
            for j in range(b):
                left = int(masked[j].sum())
                if left == 0:
                    continue
                if fast.threshold is None:
                    reveal[j, torch.topk(conf[j], int(counts[j, i])).indices] = True
                else:
                    above = conf[j] > fast.threshold
                    if not bool(above.any()):
                        above[int(conf[j].argmax())] = True
                    reveal[j] = above
            x[:, start:end] = torch.where(reveal, x0, current)
            i += 1
            step += 1
            if on_step is not None:
                on_step(step, x[:, p_len:])
    return x[:, p_len:], forwards


def _full_logits(model, x, valid, cfg, tokens, collect):
    if cfg.cfg_scale > 0:
        uncond = x.clone()
        uncond[:, : x.shape[1] - cfg.gen_length] = tokens.mask
        both = model(torch.cat([x, uncond]), key_valid=None if valid is None else torch.cat([valid, valid]))
        cond, unc = both.chunk(2)
        return unc + (cfg.cfg_scale + 1) * (cond - unc)
    return model(x, key_valid=valid, collect_kv=collect)
