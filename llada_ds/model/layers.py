"""Building blocks with no attention logic: RMSNorm and initialised-at-construction weights.

Every parameterised layer initialises itself in its own constructor (reset_parameters). DeepSpeed's
zero.Init partitions each module's parameters as soon as that module's __init__ returns, so an
initialisation applied later by a parent would only see empty shards; doing it here makes the same
code correct for plain, meta-device and zero.Init construction.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def _trunc_normal_(weight: torch.Tensor, std: float) -> None:
    # Truncating at 3 sigma removes the rare huge initial weights without changing the scale much.
    # Drawn in fp32 and then copied: drawing directly in bf16 (zero.Init with a bf16 dtype)
    # quantises the inverse-CDF sampling and distorts the tails.
    if weight.dtype == torch.float32 or weight.is_meta:
        nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        return
    full = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
    nn.init.trunc_normal_(full, mean=0.0, std=std, a=-3 * std, b=3 * std)
    weight.copy_(full)


class Linear(nn.Linear):
    """Bias-free linear layer drawn from a truncated normal with a given std."""

    def __init__(self, in_features: int, out_features: int, init_std: float) -> None:
        # Set before nn.Linear.__init__, which calls reset_parameters.
        self.init_std = init_std
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        _trunc_normal_(self.weight, self.init_std)


class Embedding(nn.Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float) -> None:
        self.init_std = init_std
        super().__init__(num_embeddings, embedding_dim)

    def reset_parameters(self) -> None:
        _trunc_normal_(self.weight, self.init_std)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, with the normalisation computed in fp32.

    The order (normalise in fp32, cast back, then scale by the weight in its own dtype) is the one of
    the released LLaDA checkpoints, so imported weights compute what they computed there.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, init_std: float, out_std: float) -> None:
        super().__init__()
        self.gate_proj = Linear(dim, hidden, init_std)
        self.up_proj = Linear(dim, hidden, init_std)
        self.down_proj = Linear(hidden, dim, out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
