"""The LLaDA reverse process (docs/llada.md, the reverse process), operation for operation.

Canvas = prompt + gen_length mask tokens. The generation is split into blocks of block_length
decoded left to right (semi-autoregressive), steps split evenly across blocks; the model always
sees the whole canvas. In a block with m masked tokens and s steps, step i reveals m // s tokens,
plus one for the first m % s steps. Each step: logits of the canvas (classifier-free guidance
optional: uncond + (cfg + 1) (cond - uncond), the uncond pass with the prompt masked); candidates
x0 = argmax of the logits (temperature 0) or of exp(logits) / (-log u)^T with u ~ U(0, 1) in
float64 (temperature T); confidence = softmax probability of the chosen token ("low_confidence")
or a uniform draw ("random"); positions after the current block never qualify; the k most
confident still-masked positions are revealed. EOS controls: forbid EOS in the logits, or give
end-of-turn zero confidence (exactly as the published code does it, which at temperature 0 also
zeroes EOS's confidence).

One step is written once, `denoise_step`, and the fast sampler (fast_sampler.py) calls it too, on
the current block instead of the whole canvas and optionally revealing by a confidence threshold
instead of a count. Guidance is written once too, `guided_logits`, for both samplers and the
likelihood estimator.

`infill` reveals the masks of a given canvas wherever they stand (a masked span inside a
sentence, with EOS filling what the span does not need): the same step over the whole canvas as
one block, the reveal counts taken from all of its masks.

Batches of prompts of different lengths are left-padded with a padding id that must differ from
the mask id; padding is its own attention segment, so real tokens never see it (bidirectional).
All draws come from one torch.Generator seeded by `seed`, in a fixed order, so a run is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model.transformer import LLaDAModel


@dataclass(frozen=True)
class SamplerConfig:
    gen_length: int = 128
    steps: int = 128
    block_length: Optional[int] = None  # None: one block of gen_length
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"  # low_confidence | random
    forbid_eos: bool = False  # logits of EOS set to -inf
    eot_zero_confidence: bool = False  # an end-of-turn candidate gets confidence 0
    seed: int = 0

    def blocks(self) -> tuple[int, int, int]:
        """(block length, number of blocks, steps per block), after checking the settings."""
        block = self.block_length or self.gen_length
        if self.gen_length <= 0 or self.steps <= 0 or block <= 0:
            raise ConfigError(f"gen_length, steps and block_length must be positive, got gen_length="
                              f"{self.gen_length}, steps={self.steps}, block_length={self.block_length}")
        if self.gen_length % block:
            raise ConfigError(f"gen_length={self.gen_length} is not a multiple of block_length={block}")
        n_blocks = self.gen_length // block
        if self.steps % n_blocks:
            raise ConfigError(f"steps={self.steps} is not a multiple of the number of blocks ({n_blocks} = "
                              f"gen_length {self.gen_length} / block_length {block})")
        if self.remasking not in ("low_confidence", "random"):
            raise ConfigError(f"remasking={self.remasking!r} is not low_confidence or random")
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be 0 (argmax) or positive")
        if self.cfg_scale < 0:
            raise ConfigError(f"cfg_scale={self.cfg_scale} must be 0 (no guidance) or positive")
        return block, n_blocks, self.steps // n_blocks


@dataclass(frozen=True)
class SpecialTokens:
    mask: int
    pad: int
    eos: int
    eot: int

    @classmethod
    def of(cls, special) -> "SpecialTokens":
        """The sampler's ids from a tokenizer's special ids (anything with mask, pad, eos, eot)."""
        return cls(mask=special.mask, pad=special.pad, eos=special.eos, eot=special.eot)


LogitsFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def unwrap(model):
    """The module a wrapper runs: a DeepSpeed engine's `.module` (whose forward gathers ZeRO-3 shards),
    a peft model's base model (LoRA); else the model itself. The wrapper is what gets called."""
    inner = getattr(model, "module", model)
    base = getattr(inner, "get_base_model", None)
    return base() if callable(base) else inner


def logits_fn(model) -> LogitsFn:
    """(tokens, valid mask or None) -> logits, for our model (or a DeepSpeed engine or peft model
    wrapping it) or any model returning `.logits`."""
    if isinstance(unwrap(model), LLaDAModel):
        def ours(x, valid):
            # Padding is a run of its own: the document mask keeps real tokens from seeing it.
            return model(x, doc_ids=None if valid is None else valid.long())
        return ours

    def hf(x, valid):
        return model(x, attention_mask=None if valid is None else valid.long()).logits
    return hf


def guided_logits(fn: LogitsFn, x: torch.Tensor, valid: Optional[torch.Tensor], prompt_len: int, mask_id: int,
                  cfg_scale: float) -> torch.Tensor:
    """fn(x, valid), or with classifier-free guidance (cfg_scale > 0) uncond + (cfg_scale + 1) *
    (cond - uncond), where the unconditional pass sees x with its first prompt_len positions
    replaced by masks. Both passes run as one batch of twice the size."""
    if cfg_scale <= 0:
        return fn(x, valid)
    uncond = x.clone()
    uncond[:, :prompt_len] = mask_id
    cond, unc = fn(torch.cat([x, uncond]), None if valid is None else torch.cat([valid, valid])).chunk(2)
    return unc + (cfg_scale + 1) * (cond - unc)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(batch, longest) tokens and the valid-token mask (None when no padding was needed)."""
    longest = max(len(p) for p in prompts)
    out = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            out[i, longest - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    valid = torch.arange(longest)[None, :] >= torch.tensor([longest - len(p) for p in prompts])[:, None]
    return out.to(device), (None if bool(valid.all()) else valid.to(device))


def canvas(prompts: Sequence[Sequence[int]] | torch.Tensor, gen_length: int, tokens: SpecialTokens,
           device=None) -> tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """(canvas, valid mask or None, prompt length): the left-padded prompts followed by gen_length
    masks; valid is False on the padding only."""
    if torch.is_tensor(prompts):
        prompts = prompts.tolist()
    prompt, valid = left_pad(prompts, tokens.pad, device)
    b, p_len = prompt.shape
    x = torch.full((b, p_len + gen_length), tokens.mask, dtype=torch.long, device=prompt.device)
    x[:, :p_len] = prompt
    if valid is not None:
        valid = torch.cat([valid, torch.ones(b, gen_length, dtype=torch.bool, device=x.device)], dim=1)
    return x, valid, p_len


def reveal_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, steps) tokens to reveal per step: m // s each, the first m % s steps one more."""
    m = masked.sum(dim=1, keepdim=True)
    counts = (m // steps).repeat(1, steps)
    counts += torch.arange(steps, device=masked.device)[None, :] < (m % steps)
    return counts


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """exp(logits) / (-log u)^T in float64 (the argmax of which samples at temperature T)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return logits.exp() / (-torch.log(u)) ** temperature


def denoise_step(logits: torch.Tensor, window: torch.Tensor, cfg: SamplerConfig, tokens: SpecialTokens,
                 generator: torch.Generator, *, counts: Optional[torch.Tensor] = None,
                 threshold: Optional[float] = None, block_end: Optional[int] = None) -> torch.Tensor:
    """One reverse step over a window of the canvas: the window's tokens with some masks revealed.

    logits: (batch, n, vocab) for the window's n positions (modified in place); window: (batch, n)
    tokens. Reveal `counts` (batch,) tokens per row, the most confident masked ones, or, with
    `threshold`, every masked token whose confidence exceeds it (at least the most confident one).
    block_end: positions of the window from there on never qualify (the exact sampler's window is
    the whole canvas); None when the window ends with the current block. The random draws
    (temperature, random remasking) are over the window's shape, from `generator`, in this order.
    """
    if (counts is None) == (threshold is None):
        raise ValueError("give either counts or threshold")
    if cfg.forbid_eos:
        logits[:, :, tokens.eos] = -torch.inf
    if threshold is not None:
        # Threshold mode runs until the block is full: a "mask" candidate would never fill it.
        logits[:, :, tokens.mask] = -torch.inf
    masked = window == tokens.mask
    noisy = add_gumbel_noise(logits, cfg.temperature, generator)
    x0 = noisy.argmax(dim=-1)
    if cfg.eot_zero_confidence:
        # As the published sampler: noisy[EOS] and logits[EOT] go to -inf. At temperature 0 noisy
        # *is* logits, so EOS and end-of-turn both get zero confidence; at T > 0 only end-of-turn does.
        noisy[:, :, tokens.eos] = -torch.inf
        logits[:, :, tokens.eot] = -torch.inf
    if cfg.remasking == "low_confidence":
        p = F.softmax(logits, dim=-1)  # in the logits' dtype, as the published sampler
        conf = torch.gather(p, -1, x0[..., None]).squeeze(-1)
    else:
        conf = torch.rand(x0.shape, device=window.device, generator=generator)
    if block_end is not None:
        conf[:, block_end:] = -torch.inf
    x0 = torch.where(masked, x0, window)
    conf = torch.where(masked, conf, torch.tensor(-torch.inf, dtype=conf.dtype, device=window.device))
    reveal = torch.zeros_like(masked)
    for j in range(window.shape[0]):
        if not bool(masked[j].any()):
            continue  # nothing left to reveal in this row (x0 equals the window there anyway)
        if threshold is None:
            reveal[j, torch.topk(conf[j], int(counts[j])).indices] = True
        else:
            above = conf[j] > threshold
            if not bool(above.any()):
                above[int(conf[j].argmax())] = True
            reveal[j] = above
    return torch.where(reveal, x0, window)


@torch.no_grad()
def generate(model_or_fn, prompts: Sequence[Sequence[int]] | torch.Tensor, cfg: SamplerConfig,
             tokens: SpecialTokens, on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Generated tokens, shape (batch, gen_length). on_step(step, canvas) watches the masks fill in."""
    if tokens.pad == tokens.mask:
        raise ConfigError(f"the padding id must differ from the mask id (both are {tokens.mask})")
    block, n_blocks, steps_per_block = cfg.blocks()
    fn = model_or_fn if not isinstance(model_or_fn, torch.nn.Module) else logits_fn(model_or_fn)
    device = next(model_or_fn.parameters()).device if isinstance(model_or_fn, torch.nn.Module) else None
    x, valid, p_len = canvas(prompts, cfg.gen_length, tokens, device)
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    step = 0
    for k in range(n_blocks):
        start, end = p_len + k * block, p_len + (k + 1) * block
        counts = reveal_counts(x[:, start:end] == tokens.mask, steps_per_block)
        for i in range(steps_per_block):
            logits = guided_logits(fn, x, valid, p_len, tokens.mask, cfg.cfg_scale)
            x = denoise_step(logits, x, cfg, tokens, gen, counts=counts[:, i], block_end=end)
            step += 1
            if on_step is not None:
                on_step(step, x[:, p_len:])
    return x[:, p_len:]


@torch.no_grad()
def infill(model_or_fn, canvas: torch.Tensor, cfg: SamplerConfig, tokens: SpecialTokens,
           on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """The canvases (batch, length) with every mask token revealed, wherever it stands.

    The whole canvas is one block decoded in cfg.steps steps: a row with m masks reveals m // steps
    of them per step, one more in the first m % steps steps, the most confident first (generate's
    step, with no position excluded). Temperature, remasking, the EOS controls and the seed act as
    in generate; gen_length and block_length do not apply (the canvas is given), nor does guidance
    (there is no prompt to hide). The rows are not padded: give canvases of one length.
    """
    if cfg.cfg_scale > 0:
        raise ConfigError(f"cfg_scale={cfg.cfg_scale}: infilling has no prompt to hide for guidance")
    replace(cfg, gen_length=cfg.steps, block_length=None).blocks()  # the checks that apply: steps, remasking, T
    fn = model_or_fn if not isinstance(model_or_fn, torch.nn.Module) else logits_fn(model_or_fn)
    device = next(model_or_fn.parameters()).device if isinstance(model_or_fn, torch.nn.Module) else canvas.device
    x = torch.as_tensor(canvas, dtype=torch.long).to(device)
    if x.dim() != 2:
        raise ConfigError(f"infill takes canvases of shape (batch, length), got shape {tuple(x.shape)}")
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    counts = reveal_counts(x == tokens.mask, cfg.steps)
    for i in range(cfg.steps):
        x = denoise_step(fn(x, None), x, cfg, tokens, gen, counts=counts[:, i])
        if on_step is not None:
            on_step(i + 1, x)
    return x
