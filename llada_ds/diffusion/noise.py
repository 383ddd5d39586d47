"""Counter-based diffusion noise: every random draw is a pure function of a key.

Construction
------------
Draws come from Philox4x64 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"),
the counter-based generator behind JAX and cuRAND, in NumPy's implementation. Philox encrypts a
256-bit counter under a 128-bit key; we use key = (seed, stream) and put the sample's identity in
the counter's high words: counter = (0, 0, global sample index, step). The draws of one sample
advance only the low 128 bits, so distinct (step, index) pairs can never share or overlap a
stream, and no hashing down to a short seed is involved (torch's CPU generator, for instance,
keeps only 32 bits of its seed: at 5e8 samples that would give millions of noise collisions).
From that stream, t and then the per-token uniforms are drawn in a fixed order, on the CPU, so
CPU and GPU runs agree bitwise; the result is then copied to the device.

Consequences: the same sample at the same step gets the same t and mask whatever its position in
the batch, the batch size, the rank it lands on, the number of ranks, or how often the job was
restarted; and no rank-local generator state has to be checkpointed. Per-batch decisions (the 1%
random-length cut) use index 0 of their own stream, keyed by (seed, step) alone, so every rank
and micro-batch of a step agrees.

The cost is one Philox generator per sample per step (~25 us for 4096 tokens) and a
host-to-device copy of a (batch, seq) tensor, negligible next to a forward pass.

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..keys import noise_key  # noqa: F401  (re-exported: part of the noise API)

# Stream ids keep independent uses of the same (step, index) apart.
STREAM_MASK = 1  # t and the token mask of a sample
STREAM_LENGTH = 2  # the per-step random-length cut
STREAM_PREFERENCE = 3  # VRPO: the masked count and positions of each Monte Carlo sample of an answer
STREAM_ROLLOUT = 4  # GRPO: the sampler's seed for one prompt's group of completions
STREAM_PROMPT_MASK = 5  # diffu-GRPO: which prompt tokens a log-probability estimate masks
STREAM_REFERENCE = 6  # VRPO without antithetic sampling: the reference's own, independent draws

# Evaluation noise uses this step: far beyond any training step, so validation losses are
# computed on fixed draws that training never sees.
EVAL_STEP = 1 << 40


def generator(seed: int, stream: int, step: int, index: int) -> np.random.Generator:
    """The Philox stream of one (seed, stream, step, index)."""
    for name, part in (("seed", seed), ("stream", stream), ("step", step), ("index", index)):
        if not isinstance(part, (int, np.integer)) or not 0 <= part < 2**64:
            raise ValueError(f"noise key part {name} must be an integer in [0, 2^64), got {part!r}")
    bits = np.random.Philox(key=np.array([seed, stream], dtype=np.uint64),
                            counter=np.array([0, 0, index, step], dtype=np.uint64))
    return np.random.Generator(bits)


@dataclass(frozen=True)
class MaskDraw:
    t: torch.Tensor  # (b,) float32 in [0, 1)
    p_mask: torch.Tensor  # (b,) float32, (1 - eps) * t + eps
    masked: torch.Tensor  # (b, l) bool


def draw_masks(
    seed: int, step: int, sample_indices: Sequence[int] | torch.Tensor, seq_len: int, eps: float,
    device: torch.device | str = "cpu",
) -> MaskDraw:
    """Per sample: t ~ U(0, 1), p = (1 - eps) t + eps, each token masked with probability p."""
    indices = [int(i) for i in (sample_indices.tolist() if torch.is_tensor(sample_indices) else sample_indices)]
    ts = np.empty(len(indices), dtype=np.float32)
    uniforms = np.empty((len(indices), seq_len), dtype=np.float32)
    for row, index in enumerate(indices):
        g = generator(seed, STREAM_MASK, step, index)
        ts[row] = g.random(dtype=np.float32)
        uniforms[row] = g.random(seq_len, dtype=np.float32)
    ts, uniforms = torch.from_numpy(ts), torch.from_numpy(uniforms)
    p_mask = (1 - eps) * ts + eps
    masked = uniforms < p_mask[:, None]
    return MaskDraw(ts.to(device), p_mask.to(device), masked.to(device))


def draw_answer_masks(seed: int, stream: int, step: int, keys: Sequence[int], answer_lengths: Sequence[int],
                      masks_per_key: int = 1) -> list[np.ndarray]:
    """Per key: a count l ~ U{1..L} for an answer of L tokens, then `masks_per_key` independent sets
    of l of its L positions, each drawn uniformly without replacement (the draw of LLaDA's likelihood
    estimator, docs/llada.md section 7): a (masks_per_key, L) bool array per key. A key's draw
    depends only on (seed, stream, step, key, L)."""
    out = []
    for key, length in zip(keys, answer_lengths):
        g = generator(seed, stream, step, int(key))
        count = int(g.integers(1, int(length) + 1))
        masks = np.zeros((masks_per_key, int(length)), dtype=bool)
        for k in range(masks_per_key):
            masks[k, g.permutation(int(length))[:count]] = True
        out.append(masks)
    return out


def draw_token_masks(seed: int, stream: int, step: int, keys: Sequence[int], lengths: Sequence[int],
                     probability: float) -> list[np.ndarray]:
    """Per key: each of `length` positions masked independently with the given probability."""
    return [generator(seed, stream, step, int(key)).random(int(length), dtype=np.float32) < probability
            for key, length in zip(keys, lengths)]


def draw_random_length(seed: int, step: int, seq_len: int, probability: float) -> int:
    """The sequence length for this step: seq_len, or with the given probability U{1..seq_len}."""
    g = generator(seed, STREAM_LENGTH, step, 0)
    if g.random() < probability:
        return int(g.integers(1, seq_len + 1))
    return seq_len
