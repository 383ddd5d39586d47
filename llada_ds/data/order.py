"""A shuffled order of n items that is a pure function of (seed, epoch, position).

``shuffled(positions, n, seed, epoch)`` maps positions 0..n-1 to a permutation of 0..n-1 without
materialising it: a Feistel network (6 rounds, SplitMix64 round function) is a bijection on
[0, 2^bits), and "cycle walking" (re-applying it until the value falls below n) restricts it to a
bijection on [0, n). Memory is O(1) in n, so a data set of a billion windows needs no index file,
and any rank can compute any global position's window without coordination. With bits the
smallest even number with 2^bits >= n, at most ~4 walks are expected per item.

``global_order(indices, n, seed)`` extends it over epochs: global index g is item
shuffled(g mod n, n, seed, epoch = g div n), one epoch after another.
"""

from __future__ import annotations

import numpy as np

from ..keys import noise_key

_ROUNDS = 6
STREAM_DATA_ORDER = 16  # keeps data-order keys apart from the diffusion noise streams


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (arithmetic wraps mod 2^64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _feistel(x: np.ndarray, half_bits: int, keys: list[np.uint64]) -> np.ndarray:
    mask = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << shift) | right


def shuffled(positions: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """The items at the given positions of the (seed, epoch) permutation of range(n)."""
    positions = np.asarray(positions, dtype=np.int64)
    if n <= 0:
        raise ValueError(f"cannot order {n} items")
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise IndexError(f"positions outside [0, {n})")
    if n == 1:
        return np.zeros_like(positions)
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    keys = [np.uint64(noise_key(seed, STREAM_DATA_ORDER, epoch, r)) for r in range(_ROUNDS)]
    out = _feistel(positions.astype(np.uint64), bits // 2, keys)
    todo = out >= np.uint64(n)
    while todo.any():
        out[todo] = _feistel(out[todo], bits // 2, keys)
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def global_order(indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The item of each global index g: shuffled(g mod n, n, seed, epoch = g div n).

    Vectorised: one ``shuffled`` call per epoch the indices span (usually one or two).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if n <= 0:
        raise ValueError(f"cannot order {n} items")
    out = np.empty_like(indices)
    epochs = indices // n
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = shuffled(indices[sel] % n, n, seed, int(epoch))
    return out
