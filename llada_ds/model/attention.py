"""Non-causal attention kernels behind one interface.

Every backend computes softmax(Q K^T / sqrt(d)) V with no causal mask (LLaDA), unless built with
causal=True (the autoregressive baseline of the paper's comparisons). Tensors are laid out
(batch, seq, heads, head_dim), flash-attn's native layout; keys and values may have fewer heads
than queries (grouped-query attention: query head i reads key/value head i // (heads / kv_heads),
the grouping flash-attn and SDPA's enable_gqa both use).

Optional document masking: ``doc_ids`` (batch, seq) marks packed documents; a token attends only to
tokens of its own document, in both directions. Documents are maximal runs of equal ids, so every
backend sees the same segments (flash-attn's varlen kernel can only express contiguous runs). The
same mechanism serves batched inference: left padding is a run of its own, so real tokens never see
it. Masking is off by default, as in LLaDA's pre-training and SFT.

A backend is used in two stages: ``prepare(doc_ids, seq_len, device)`` once per model forward
(mask or cu_seqlens, built on the device and shared by all layers), then ``backend(q, k, v,
prepared)`` in each layer.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError


_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def segment_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Number the maximal runs of equal ids in each row: [7, 7, 3, 7] -> [0, 0, 1, 2]."""
    if doc_ids.dim() != 2:
        raise ValueError(f"doc_ids must have shape (batch, seq), got {tuple(doc_ids.shape)}")
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts.long().cumsum(dim=1) - 1


def block_diagonal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, 1, seq, seq) mask, True where query and key are in the same document."""
    seg = segment_ids(doc_ids)
    return (seg[:, :, None] == seg[:, None, :])[:, None]


def cu_seqlens_from_doc_ids(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative document lengths over the flattened batch (int32, starting at 0), and the longest.

    Row boundaries always start a new document, so documents never span two rows.
    """
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    begin = starts.flatten().nonzero().flatten()
    total = torch.tensor([doc_ids.numel()], device=doc_ids.device, dtype=begin.dtype)
    cu = torch.cat((begin, total)).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max().item())
    return cu, max_len


def _causal(s: int, device: Optional[torch.device]) -> torch.Tensor:
    """Boolean (1, 1, s, s) left-to-right mask: query i sees keys 0..i."""
    return torch.ones(s, s, dtype=torch.bool, device=device).tril()[None, None]


def flash_supports_head_dim(head_dim: int) -> bool:
    """flash-attn 2 runs head dimensions that are multiples of 8, up to 256."""
    return head_dim % 8 == 0 and head_dim <= 256


def _check_flash_head_dim(head_dim: int) -> None:
    if not flash_supports_head_dim(head_dim):
        raise ConfigError(f"flash-attn needs a head dimension that is a multiple of 8 and at most 256, "
                         f"got {head_dim}; use model.attention='sdpa'")


def _expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Repeat key/value heads so each query head has its own: (b, s, kv, d) -> (b, s, heads, d)."""
    groups = n_heads // x.shape[2]
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


class EagerAttention:
    """The reference: scores, softmax and weighted sum written out, in fp32."""

    name = "eager"

    def __init__(self, causal: bool = False) -> None:
        self.causal = causal

    def prepare(self, doc_ids: Optional[torch.Tensor], seq_len: Optional[int] = None,
                device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        """The mask, on doc_ids' device, or on `device` when only the causal mask is needed."""
        mask = None if doc_ids is None else block_diagonal_mask(doc_ids)
        if self.causal:
            tril = _causal(seq_len, device if doc_ids is None else doc_ids.device)
            mask = tril if mask is None else mask & tril
        return mask

    def __call__(self, q, k, v, mask: Optional[torch.Tensor]) -> torch.Tensor:
        n_heads = q.shape[2]
        qf = q.float().transpose(1, 2)
        kf = _expand_kv(k, n_heads).float().transpose(1, 2)
        vf = _expand_kv(v, n_heads).float().transpose(1, 2)
        scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ vf
        return out.transpose(1, 2).to(q.dtype)


class SdpaAttention:
    """torch.nn.functional.scaled_dot_product_attention with is_causal=False.

    Torch picks its flash, cuDNN, memory-efficient or math kernel. Only the flash kernel (no mask,
    fp16/bf16) and math accept grouped KV heads natively; in every other case the KV heads are
    repeated first, so that a masked or fp32 call reaches the memory-efficient kernel instead of
    falling back to math, which materialises (batch, heads, seq, seq) scores. A document mask rules
    out SDPA's flash kernel, so packed-document training on GPU should prefer `flash`.
    """

    name = "sdpa"

    def __init__(self, causal: bool = False) -> None:
        self.causal = causal

    def prepare(self, doc_ids: Optional[torch.Tensor], seq_len: Optional[int] = None,
                device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        if doc_ids is None:
            return None  # causal without documents: SDPA's is_causal, no mask tensor
        mask = block_diagonal_mask(doc_ids)
        if self.causal:
            mask = mask & _causal(doc_ids.shape[1], doc_ids.device)
        return mask

    def __call__(self, q, k, v, mask: Optional[torch.Tensor]) -> torch.Tensor:
        native_gqa = k.shape[2] != q.shape[2] and mask is None and q.dtype in _FLASH_DTYPES
        if not native_gqa:
            k, v = _expand_kv(k, q.shape[2]), _expand_kv(v, q.shape[2])
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, is_causal=self.causal and mask is None, enable_gqa=native_gqa,
        )
        return out.transpose(1, 2)


@functools.lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build that fails at import
        return False
    return True


class FlashAttention:
    """flash-attn 2, non-causal; packed documents go through the varlen kernel with cu_seqlens.

    The kernels are constructor arguments so the packing logic can be checked on machines without
    flash-attn against a plainly written varlen reference (tests do this on CPU).
    """

    name = "flash"

    def __init__(self, attn_func: Callable | None = None, varlen_func: Callable | None = None,
                 causal: bool = False) -> None:
        self.causal = causal
        if attn_func is None or varlen_func is None:
            try:
                from flash_attn import flash_attn_func, flash_attn_varlen_func
            except Exception as exc:
                raise ConfigError(
                    "model.attention='flash' needs the flash-attn package on a CUDA machine "
                    "(pip install 'llada-ds[gpu]'); use 'sdpa' or 'auto' elsewhere"
                ) from exc
            attn_func = attn_func or flash_attn_func
            varlen_func = varlen_func or flash_attn_varlen_func
        self._attn = attn_func
        self._varlen = varlen_func

    def prepare(self, doc_ids: Optional[torch.Tensor], seq_len: Optional[int] = None,
                device: Optional[torch.device] = None) -> Optional[tuple[torch.Tensor, int]]:
        return None if doc_ids is None else cu_seqlens_from_doc_ids(doc_ids)

    def __call__(self, q, k, v, packed: Optional[tuple[torch.Tensor, int]]) -> torch.Tensor:
        _check_flash_head_dim(q.shape[-1])  # also checked once by resolve_backend; kept for direct use
        if packed is None:
            return self._attn(q, k, v, causal=self.causal)
        b, s, h, d = q.shape
        cu, max_len = packed
        # Packed documents cover every token, so flattening the batch is all the varlen kernel
        # needs: no gather of non-padding tokens.
        out = self._varlen(
            q.reshape(b * s, h, d), k.reshape(b * s, k.shape[2], d), v.reshape(b * s, v.shape[2], d),
            cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len, max_seqlen_k=max_len,
            causal=self.causal,
        )
        return out.reshape(b, s, h, d)


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, causal: bool = False,
                    head_dim: Optional[int] = None) -> Any:
    """The backend object for a config name; `auto` is flash-attn when it can run (device, dtype,
    installed, and head_dim when given), else SDPA."""
    if name == "auto":
        use_flash = (device.type == "cuda" and dtype in _FLASH_DTYPES
                     and (head_dim is None or flash_supports_head_dim(head_dim)) and flash_attn_available())
        return FlashAttention(causal=causal) if use_flash else SdpaAttention(causal)
    if name == "flash":
        if device.type != "cuda" or dtype not in _FLASH_DTYPES:
            raise ConfigError(
                f"model.attention='flash' runs on CUDA in fp16/bf16, not on {device.type} in {dtype}; "
                "use 'auto' to fall back to sdpa"
            )
        if head_dim is not None:
            _check_flash_head_dim(head_dim)
        return FlashAttention(causal=causal)
    if name == "sdpa":
        return SdpaAttention(causal)
    if name == "eager":
        return EagerAttention(causal)
    raise ValueError(f"unknown attention backend {name!r}")
