"""The forward (masking) process of LLaDA's pre-training and SFT objectives (docs/llada.md).

Given clean tokens x0, each sample gets a diffusion time t ~ U(0, 1), a masking probability
p = (1 - eps) t + eps, and each of its tokens becomes the mask id with probability p. All draws are
counter-based (noise.py): keyed by (seed, step, global sample index), never by rank or position in
the batch. The result carries what the loss needs: the noisy input, the targets, which positions
are scored, and each sample's weight w_i:
    pre-training  w_i = 1 / (p_i * b * l)    (all positions of the batch, not the mask count)
    SFT           w_i = 1 / (p_i * A_i * b)  (A_i = answer length of sample i, EOS padding included)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..errors import ConfigError, DataError
from .noise import draw_masks, draw_random_length


@dataclass(frozen=True)
class NoiseConfig:
    seed: int = 0
    eps: float = 1e-3  # minimum masking probability: p = (1 - eps) t + eps
    random_length_prob: float = 0.01  # share of pre-training steps cut to a random length

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise ConfigError(f"noise.eps must be in (0, 1), got {self.eps!r}")
        if not 0 <= self.random_length_prob <= 1:
            raise ConfigError(f"noise.random_length_prob must be in [0, 1], got {self.random_length_prob!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"noise.seed must be a non-negative integer, got {self.seed!r}")


@dataclass
class DiffusionBatch:
    noisy: torch.Tensor  # (b, l) long: model input, masked positions replaced by the mask id
    target: torch.Tensor  # (b, l) long: the clean tokens x0
    masked: torch.Tensor  # (b, l) bool: positions scored by the loss
    t: torch.Tensor  # (b,) diffusion time of each sample
    p_mask: torch.Tensor  # (b,) masking probability of each sample
    sample_weight: torch.Tensor  # (b,) w_i above
    doc_ids: Optional[torch.Tensor] = None  # (b, l), cut with the batch


def check_tokens(
    x0: torch.Tensor, mask_id: int, vocab_size: Optional[int] = None,
    sample_indices: Optional[Sequence[int]] = None,
) -> None:
    """Refuse batches the model cannot train on, naming the sample and position at fault."""
    if x0.dim() != 2 or x0.dtype.is_floating_point or x0.dtype == torch.bool:
        raise DataError(f"token batch must be an integer tensor of shape (batch, seq), got {x0.dtype} {tuple(x0.shape)}")

    def where(flags: torch.Tensor) -> str:
        row, col = (int(v) for v in flags.nonzero()[0])
        name = f"sample index {int(sample_indices[row])}" if sample_indices is not None else f"batch row {row}"
        return f"{name}, position {col}, token {int(x0[row, col])}"

    bad = x0 < 0 if vocab_size is None else (x0 < 0) | (x0 >= vocab_size)
    if bad.any():
        raise DataError(f"token outside the vocabulary [0, {vocab_size}) at {where(bad)}")
    if (x0 == mask_id).any():
        raise DataError(
            f"training data contains the mask id {mask_id} at {where(x0 == mask_id)}; "
            "the mask token is reserved for the diffusion process"
        )


def pretrain_batch(
    x0: torch.Tensor, sample_indices: Sequence[int] | torch.Tensor, step: int, mask_id: int,
    noise: NoiseConfig, doc_ids: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None,
) -> DiffusionBatch:
    """Pre-training forward process: optional random-length cut, then per-sample masking."""
    indices = sample_indices.tolist() if torch.is_tensor(sample_indices) else list(sample_indices)
    if len(indices) != x0.shape[0]:
        raise ValueError(f"{len(indices)} sample indices for a batch of {x0.shape[0]} sequences")
    check_tokens(x0, mask_id, vocab_size, indices)
    length = draw_random_length(noise.seed, step, x0.shape[1], noise.random_length_prob)
    x0 = x0[:, :length]
    if doc_ids is not None:
        doc_ids = doc_ids[:, :length]
    b, l = x0.shape
    draw = draw_masks(noise.seed, step, indices, l, noise.eps, device=x0.device)
    noisy = torch.where(draw.masked, torch.full_like(x0, mask_id), x0)
    weight = 1.0 / (draw.p_mask * (b * l))
    return DiffusionBatch(noisy, x0, draw.masked, draw.t, draw.p_mask, weight, doc_ids)


def sft_batch(
    x0: torch.Tensor, prompt_lengths: Sequence[int] | torch.Tensor, sample_indices: Sequence[int] | torch.Tensor,
    step: int, mask_id: int, noise: NoiseConfig, vocab_size: Optional[int] = None,
) -> DiffusionBatch:
    """SFT forward process: mask as in pre-training, then restore the prompt (never masked).

    x0 holds prompt then answer, the answer right-padded with EOS to the batch length; the EOS
    padding is part of the answer and is trained on. No random-length cut (it would cut answers).
    """
    indices = sample_indices.tolist() if torch.is_tensor(sample_indices) else list(sample_indices)
    b, l = x0.shape
    if len(indices) != b:
        raise ValueError(f"{len(indices)} sample indices for a batch of {b} sequences")
    check_tokens(x0, mask_id, vocab_size, indices)
    prompt_len = torch.as_tensor(prompt_lengths, dtype=torch.long, device=x0.device).reshape(-1)
    if prompt_len.numel() != b:
        raise ValueError(f"{prompt_len.numel()} prompt lengths for a batch of {b} sequences")
    bad = (prompt_len < 0) | (prompt_len >= l)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise DataError(
            f"sample index {indices[row]}: prompt length {int(prompt_len[row])} leaves no answer "
            f"in a sequence of {l} tokens"
        )
    draw = draw_masks(noise.seed, step, indices, l, noise.eps, device=x0.device)
    is_prompt = torch.arange(l, device=x0.device)[None, :] < prompt_len[:, None]
    masked = draw.masked & ~is_prompt
    noisy = torch.where(masked, torch.full_like(x0, mask_id), x0)
    answer_len = (l - prompt_len).to(draw.p_mask.dtype)
    weight = 1.0 / (draw.p_mask * answer_len * b)
    return DiffusionBatch(noisy, x0, masked, draw.t, draw.p_mask, weight)
