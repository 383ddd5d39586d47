"""Counter-based diffusion noise: every random draw is a pure function of a key.

Construction
------------
For a sample we hash (seed, stream, step, global sample index) into a 63-bit integer with a
chain of SplitMix64 finalisers (Steele et al. 2014; each part is xor-ed into the state and mixed,
so changing any part changes every output bit with probability ~1/2). That integer seeds a fresh
CPU ``torch.Generator`` (Mersenne Twister), from which the sample's t and its per-token uniforms
are drawn in a fixed order. The draws happen on the CPU whatever the training device, so they are
bitwise identical on CPU and GPU, and are then copied to the device.

Consequences: the same sample at the same step gets the same t and mask whatever its position in
the batch, the batch size, the rank it lands on, the number of ranks, or how often the job was
restarted; and no rank-local generator state has to be checkpointed. Per-batch decisions (the 1%
random-length cut) are keyed by (seed, step) alone, so every rank and micro-batch of a step agrees.

The cost is one generator per sample per step (microseconds) and a host-to-device copy of a
(batch, seq) tensor, negligible next to a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

_MASK64 = (1 << 64) - 1

# Stream ids keep independent uses of the same (step, index) apart.
STREAM_MASK = 1  # t and the token mask of a sample
STREAM_LENGTH = 2  # the per-step random-length cut
STREAM_LIKELIHOOD = 3  # reserved for Monte Carlo likelihood estimates


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def noise_key(seed: int, stream: int, step: int, index: int) -> int:
    """A 63-bit key (fits torch.Generator.manual_seed) from four non-negative integers."""
    state = 0
    for name, part in (("seed", seed), ("stream", stream), ("step", step), ("index", index)):
        if not isinstance(part, int) or part < 0:
            raise ValueError(f"noise key part {name} must be a non-negative integer, got {part!r}")
        state = _splitmix64(state ^ (part & _MASK64))
    return state >> 1


def generator(seed: int, stream: int, step: int, index: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(noise_key(seed, stream, step, index))


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
    ts = torch.empty(len(indices), dtype=torch.float32)
    uniforms = torch.empty(len(indices), seq_len, dtype=torch.float32)
    for row, index in enumerate(indices):
        g = generator(seed, STREAM_MASK, step, index)
        ts[row] = torch.rand((), generator=g)
        uniforms[row] = torch.rand(seq_len, generator=g)
    p_mask = (1 - eps) * ts + eps
    masked = uniforms < p_mask[:, None]
    return MaskDraw(ts.to(device), p_mask.to(device), masked.to(device))


def draw_random_length(seed: int, step: int, seq_len: int, probability: float) -> int:
    """The sequence length for this step: seq_len, or with the given probability U{1..seq_len}."""
    g = generator(seed, STREAM_LENGTH, step, 0)
    if torch.rand((), generator=g).item() < probability:
        return int(torch.randint(1, seq_len + 1, (), generator=g).item())
    return seq_len
