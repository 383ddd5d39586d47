"""Rotary position embeddings, half-split ("rotate_half") form, computed in fp32.

The angles are recomputed from the positions at every forward instead of being cached in a buffer:
it costs one (seq, head_dim) outer product per forward, and keeps the model free of buffers that
would have to be materialised after building on the meta device or under ZeRO-3's zero.Init.
"""

from __future__ import annotations

import torch


def rope_angles(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, fp32, shape positions.shape + (head_dim,).

    Dimension i and i + head_dim/2 form a pair rotated by position * theta^(-2i/head_dim); the
    frequencies are repeated for both halves so that apply_rope is two multiplies and an add.
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (batch, seq, heads, head_dim) in fp32 and return it in x's dtype.

    cos/sin have shape (seq, head_dim) or (batch, seq, head_dim).
    """
    if cos.dim() == 2:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
