"""Keyed 64-bit hashing: a pure function of a few integers, for counter-based randomness.

SplitMix64 (Steele, Lea & Flood 2014) finalisers chained over the parts: each part is xor-ed into
the state and mixed, so changing any part changes every output bit with probability ~1/2. Used
where a 64-bit key or a uniform decision is needed from (seed, stream, counter...) without any
generator state: data order round keys, the train/validation split. No torch import, so data
worker processes start fast.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def noise_key(seed: int, stream: int, step: int, index: int) -> int:
    """A 64-bit key from four non-negative integers."""
    state = 0
    for name, part in (("seed", seed), ("stream", stream), ("step", step), ("index", index)):
        if not isinstance(part, int) or part < 0:
            raise ValueError(f"noise key part {name} must be a non-negative integer, got {part!r}")
        state = _splitmix64(state ^ (part & _MASK64))
    return state
