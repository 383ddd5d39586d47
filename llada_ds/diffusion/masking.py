"""The forward (masking) process of LLaDA's pre-training and SFT objectives (docs/llada.md).

Given clean tokens x0, each sample gets a diffusion time t ~ U(0, 1), a masking probability
p = (1 - eps) t + eps, and each of its tokens becomes the mask id with probability p. All draws are
counter-based (noise.py): keyed by (seed, step, global sample index), never by rank or position in
the batch. The result carries what the loss needs: the noisy input, the targets, which positions
are scored (as a mask and as flat indices), and each sample's weight w_i:
    pre-training  w_i = 1 / (p_i * b * l)    (all positions of the batch, not the mask count)
    SFT           w_i = 1 / (p_i * A_i * b)  (A_i = answer length of sample i, EOS padding included)

The draws are made on the host, so the whole forward process runs there (given host tensors, it
reads nothing back from a device) and its result is copied to the device in one go
(`DiffusionBatch.to`); the objectives hand it the host copy of their micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np
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
    # (n,) long: the masked positions in the flattened (b * l) order, i.e. masked.nonzero() in
    # row-major order; computed with the mask on the host (None: derived from `masked`).
    index: Optional[torch.Tensor] = None

    @property
    def positions(self) -> torch.Tensor:
        """(n,) flat indices of the scored positions (row-major), what the model's logits_mask takes."""
        if self.index is None:
            self.index = self.masked.reshape(-1).nonzero().squeeze(1)
        return self.index

    @property
    def row_targets(self) -> torch.Tensor:
        """(n,) the clean token of each scored position."""
        return self.target.reshape(-1).index_select(0, self.positions)

    @property
    def row_samples(self) -> torch.Tensor:
        """(n,) the sample (batch row) each scored position belongs to."""
        return torch.div(self.positions, self.target.shape[1], rounding_mode="floor")

    @property
    def row_weights(self) -> torch.Tensor:
        """(n,) w_i of each scored position's sample: the loss is sum over rows of w CE."""
        return self.sample_weight.index_select(0, self.row_samples)

    def to(self, device: torch.device | str) -> "DiffusionBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return DiffusionBatch(*(move(getattr(self, f.name)) for f in fields(self)))


def check_tokens(
    x0: torch.Tensor, mask_id: int, vocab_size: Optional[int] = None,
    sample_indices: Optional[Sequence[int]] = None,
) -> None:
    """Refuse batches the model cannot train on, naming the sample and position at fault.

    Checked on the host (in numpy): given host tensors, nothing is read back from a device.
    """
    if x0.dim() != 2 or x0.dtype.is_floating_point or x0.dtype == torch.bool:
        raise DataError(f"token batch must be an integer tensor of shape (batch, seq), got {x0.dtype} {tuple(x0.shape)}")
    a = _host(x0).numpy()

    def where(flags: np.ndarray) -> str:
        row, col = (int(v) for v in np.argwhere(flags)[0])
        name = f"sample index {int(sample_indices[row])}" if sample_indices is not None else f"batch row {row}"
        return f"{name}, position {col}, token {int(a[row, col])}"

    bad = a < 0 if vocab_size is None else (a < 0) | (a >= vocab_size)
    if bad.any():
        raise DataError(f"token outside the vocabulary [0, {vocab_size}) at {where(bad)}")
    if (a == mask_id).any():
        raise DataError(
            f"training data contains the mask id {mask_id} at {where(a == mask_id)}; "
            "the mask token is reserved for the diffusion process"
        )


def _host(t: torch.Tensor) -> torch.Tensor:
    return t if t.device.type == "cpu" else t.cpu()


def pretrain_batch(
    x0: torch.Tensor, sample_indices: Sequence[int] | torch.Tensor, step: int, mask_id: int,
    noise: NoiseConfig, doc_ids: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None,
) -> DiffusionBatch:
    """Pre-training forward process: optional random-length cut, then per-sample masking.

    Runs on the host (device tensors are copied there first); the result is on x0's device.
    """
    device, x0 = x0.device, _host(x0)
    doc_ids = None if doc_ids is None else _host(doc_ids)
    indices = sample_indices.tolist() if torch.is_tensor(sample_indices) else list(sample_indices)
    if len(indices) != x0.shape[0]:
        raise ValueError(f"{len(indices)} sample indices for a batch of {x0.shape[0]} sequences")
    check_tokens(x0, mask_id, vocab_size, indices)
    length = draw_random_length(noise.seed, step, x0.shape[1], noise.random_length_prob)
    x0 = x0[:, :length]
    if doc_ids is not None:
        doc_ids = doc_ids[:, :length]
    b, l = x0.shape
    draw = draw_masks(noise.seed, step, indices, l, noise.eps)
    noisy = torch.where(draw.masked, torch.full_like(x0, mask_id), x0)
    weight = 1.0 / (draw.p_mask * (b * l))
    return DiffusionBatch(noisy, x0, draw.masked, draw.t, draw.p_mask, weight, doc_ids,
                          _flat_index(draw.masked)).to(device)


def sft_batch(
    x0: torch.Tensor, prompt_lengths: Sequence[int] | torch.Tensor, sample_indices: Sequence[int] | torch.Tensor,
    step: int, mask_id: int, noise: NoiseConfig, vocab_size: Optional[int] = None,
) -> DiffusionBatch:
    """SFT forward process: mask as in pre-training, then restore the prompt (never masked).

    x0 holds prompt then answer, the answer right-padded with EOS to the batch length; the EOS
    padding is part of the answer and is trained on. No random-length cut (it would cut answers).
    Runs on the host (device tensors are copied there first); the result is on x0's device.
    """
    device, x0 = x0.device, _host(x0)
    indices = sample_indices.tolist() if torch.is_tensor(sample_indices) else list(sample_indices)
    b, l = x0.shape
    if len(indices) != b:
        raise ValueError(f"{len(indices)} sample indices for a batch of {b} sequences")
    check_tokens(x0, mask_id, vocab_size, indices)
    prompt_len = _host(torch.as_tensor(prompt_lengths, dtype=torch.long)).reshape(-1)
    if prompt_len.numel() != b:
        raise ValueError(f"{prompt_len.numel()} prompt lengths for a batch of {b} sequences")
    bad = ((prompt_len < 0) | (prompt_len >= l)).numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"sample index {indices[row]}: prompt length {int(prompt_len[row])} leaves no answer "
            f"in a sequence of {l} tokens"
        )
    draw = draw_masks(noise.seed, step, indices, l, noise.eps)
    is_prompt = torch.arange(l)[None, :] < prompt_len[:, None]
    masked = draw.masked & ~is_prompt
    noisy = torch.where(masked, torch.full_like(x0, mask_id), x0)
    answer_len = (l - prompt_len).to(draw.p_mask.dtype)
    weight = 1.0 / (draw.p_mask * answer_len * b)
    return DiffusionBatch(noisy, x0, masked, draw.t, draw.p_mask, weight, None, _flat_index(masked)).to(device)


def _flat_index(masked: torch.Tensor) -> torch.Tensor:
    """Flat row-major indices of a host mask (numpy: no torch operation that would sync a device)."""
    return torch.from_numpy(np.flatnonzero(masked.numpy()))
