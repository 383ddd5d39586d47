"""A faster, approximate LLaDA sampler: key/value caching and confidence-threshold decoding.

Every exact step runs the model on the whole canvas. Within a block only the block's tokens change,
so (as Fast-dLLM observed) the keys and values of the other positions change little:
- cache="prefix": at each block boundary one full forward computes every position's keys/values;
  the following steps of the block run only the block and the (masked) suffix, attending to the
  cached prefix (prompt + finished blocks).
- cache="dual": the suffix's keys/values are cached too; a step runs only the block's tokens.
- threshold=t: a step reveals every masked token of the block whose confidence exceeds t (at least
  the most confident one) instead of the fixed per-step count, so easy spans finish in one step.
Each step is the exact sampler's `denoise_step` applied to the current block (the exact sampler
applies it to the whole canvas, with the positions after the block excluded), so cache="none"
with no threshold reveals what the exact sampler reveals (tested). Two differences remain by
design: the random draws (temperature > 0, random remasking) cover the block rather than the
whole canvas, so with them the two samplers draw different streams; and only the generated span
is decoded (mask tokens placed inside a prompt stay as they are, whereas the exact sampler may
fill them).

Batches with different prompt lengths are left-padded; the padding is masked out of every
attention by a key mask, cached keys included (each cached key carries its validity), so every
row of a batch gets what it would get alone. Classifier-free guidance is only available without
a cache. The model's calls carry an inference context (llada_ds.model.kv_cache) that names the
kernel: SDPA, or the eager one if the model is configured eager, because flash-attn (what "auto"
picks on GPUs) cannot take a key mask. The model itself, its config included, is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..errors import ConfigError
from ..model.kv_cache import KVCache, cache_backend, inference_context
from ..model.transformer import LLaDAModel
from .sampler import SamplerConfig, SpecialTokens, canvas, denoise_step, guided_logits, reveal_counts, unwrap


@dataclass(frozen=True)
class FastConfig:
    cache: str = "prefix"  # none | prefix | dual
    threshold: Optional[float] = None

    def __post_init__(self) -> None:
        if self.cache not in ("none", "prefix", "dual"):
            raise ConfigError(f"cache={self.cache!r} is not none, prefix or dual")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError(f"threshold={self.threshold} must be in (0, 1)")


@torch.no_grad()
def generate_fast(model: LLaDAModel, prompts: Sequence[Sequence[int]] | torch.Tensor, cfg: SamplerConfig,
                  tokens: SpecialTokens, fast: FastConfig = FastConfig(),
                  on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> tuple[torch.Tensor, int]:
    """(generated tokens (batch, gen_length), number of model forwards). model: our model, or a
    DeepSpeed engine or peft model wrapping it."""
    if not isinstance(unwrap(model), LLaDAModel):
        raise TypeError("the fast sampler needs llada_ds's model (it reads and feeds its key/value cache)")
    if cfg.cfg_scale > 0 and fast.cache != "none":
        raise ConfigError(f"classifier-free guidance (cfg_scale={cfg.cfg_scale}) is not supported with a "
                          f"key/value cache (cache={fast.cache!r}); use cache='none'")
    block, n_blocks, steps_per_block = cfg.blocks()
    device = next(model.parameters()).device
    x, valid, p_len = canvas(prompts, cfg.gen_length, tokens, device)
    total = x.shape[1]
    # Every call of this sampler may carry a key mask (padding), which flash-attn cannot take.
    attention = cache_backend(unwrap(model).config.attention)

    def full(collect: Optional[list]):
        """(tokens, valid) -> logits of a whole-canvas forward, collecting keys/values if asked."""
        return lambda t, v: model(t, cache=inference_context(attention, v, collect=collect))

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
                logits = guided_logits(full(collect), x, valid, p_len, tokens.mask, cfg.cfg_scale)
                forwards += 1 + (cfg.cfg_scale > 0)
                if collect:
                    kept = KVCache.from_collected(collect, valid)
                    if fast.cache == "prefix":
                        cache, (q0, q1) = kept.select(positions[:start]), (start, total)
                    else:
                        cache, (q0, q1) = kept.select(torch.cat([positions[:start], positions[end:]])), (start, end)
                logits = logits[:, start:end]
            else:
                context = inference_context(attention, None if valid is None else valid[:, q0:q1],
                                            positions=positions[q0:q1], past=cache)
                logits = model(x[:, q0:q1], cache=context)[:, start - q0 : end - q0]
                forwards += 1
            if fast.cache == "none":
                cache = None  # recompute everything at every step
            x[:, start:end] = denoise_step(logits, x[:, start:end], cfg, tokens, gen, threshold=fast.threshold,
                                           counts=None if fast.threshold is not None else counts[:, i])
            i += 1
            step += 1
            if on_step is not None:
                on_step(step, x[:, p_len:])
    return x[:, p_len:], forwards
