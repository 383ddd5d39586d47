"""What a cached-sampler forward needs beyond the tokens, in one object the caller builds.

Training calls the model with tokens (and document ids, a logits mask, or causal=True) only. The
fast sampler also needs to run part of the canvas at given RoPE positions, attending to keys and
values kept from an earlier forward (`KVCache`), with a padding mask over all those keys, and to
collect the keys/values each layer computes. All of that travels in one `InferenceContext`, which
`inference_context` builds: the model reads it and builds nothing of it itself.

Cached calls always carry (or may carry) a key padding mask, which flash-attn's kernels cannot
take, so a context names its own attention backend: SDPA, or the eager reference when the model is
configured eager (`cache_backend`). The model's configuration is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Backends that accept a key mask of shape (batch, 1, 1, keys).
CACHE_BACKENDS = ("sdpa", "eager")


@dataclass
class KVCache:
    """Keys and values of positions not recomputed, per layer: (batch, n, kv_heads, head_dim)."""

    keys: list
    values: list
    valid: Optional[torch.Tensor] = None  # (batch, n) bool: False for padding

    @classmethod
    def from_collected(cls, collected: list, valid: Optional[torch.Tensor] = None) -> "KVCache":
        """The cache of a forward whose context collected each layer's (keys, values)."""
        return cls([k for k, _ in collected], [v for _, v in collected], valid)

    def select(self, index: torch.Tensor) -> "KVCache":
        """The cache restricted to positions `index` (1-D) of its sequence axis."""
        return KVCache([k[:, index] for k in self.keys], [v[:, index] for v in self.values],
                       None if self.valid is None else self.valid[:, index])


@dataclass(frozen=True)
class InferenceContext:
    """Everything a cached forward needs besides the tokens; read by the model, never built by it.

    attention: the backend for this call, one of CACHE_BACKENDS.
    positions: (seq,) or (batch, seq) RoPE positions of the input tokens; None means 0..seq-1.
    past: keys/values (RoPE applied) of other positions that the input tokens attend to as well;
        they come before the input's own keys.
    key_mask: (batch, 1, 1, n_past + seq) bool, True for keys that may be attended to, the same
        for every query; None when every key may be.
    collect: a list that receives each layer's (keys, values) of the input tokens.
    """

    attention: str
    positions: Optional[torch.Tensor] = None
    past: Optional[KVCache] = None
    key_mask: Optional[torch.Tensor] = None
    collect: Optional[list] = None

    def __post_init__(self) -> None:
        if self.attention not in CACHE_BACKENDS:
            raise ValueError(f"a cached forward runs on {' or '.join(CACHE_BACKENDS)} (it may need a key mask), "
                             f"got attention={self.attention!r}")


def cache_backend(configured: str) -> str:
    """The backend for cached calls of a model configured with `configured`: eager stays eager,
    anything else (auto, flash, sdpa) runs SDPA, which takes a key mask."""
    return "eager" if configured == "eager" else "sdpa"


def inference_context(attention: str, valid: Optional[torch.Tensor] = None, *,
                      positions: Optional[torch.Tensor] = None, past: Optional[KVCache] = None,
                      collect: Optional[list] = None) -> InferenceContext:
    """The context for a forward on some tokens, with the key padding mask made here.

    valid: (batch, seq) bool over the input tokens, False for padding; None when there is none.
    With `past`, positions are required (the input is not at 0..seq-1) and the mask covers the
    cached keys first (their own `valid`), then the input's.
    """
    if past is None:
        keys_valid = valid
    else:
        if positions is None:
            raise ValueError("a forward that attends to cached keys needs the positions of its tokens")
        if valid is None and past.valid is None:
            keys_valid = None
        else:
            b, n_past = past.keys[0].shape[:2]
            device = past.keys[0].device
            old = past.valid if past.valid is not None else torch.ones(b, n_past, dtype=torch.bool, device=device)
            new = valid if valid is not None else torch.ones(b, positions.shape[-1], dtype=torch.bool, device=device)
            keys_valid = torch.cat([old, new], dim=1)
    # No mask at all when nothing is padding: SDPA can then pick its unmasked kernels.
    key_mask = None if keys_valid is None or bool(keys_valid.all()) else keys_valid[:, None, None, :]
    return InferenceContext(attention, positions, past, key_mask, collect)
