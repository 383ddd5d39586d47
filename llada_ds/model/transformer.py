"""The LLaDA mask predictor: a LLaMA-style Transformer without the causal mask.

Pre-norm blocks (RMSNorm -> attention with RoPE -> residual, RMSNorm -> SwiGLU -> residual), a
final RMSNorm and an untied output head; no biases. Logits are not shifted: the logit at position i
predicts the token at position i. Plain single-device PyTorch: ZeRO-3, activation checkpointing
and launchers wrap it from outside (checkpointing wraps each element of ``layers``). The fast
sampler's cached calls pass one ``InferenceContext`` (kv_cache.py) that it builds itself: the model
reads positions, cached keys/values, key mask and kernel from it and is never reconfigured.

Initialisation (for training from scratch at depth)
---------------------------------------------------
Matrices are drawn from a normal truncated at 3 sigma with sigma = sqrt(2 / (5 * d_model))
("small init", Nguyen & Salazar 2019, the GPT-NeoX default), so the scale follows the width rather
than a fixed 0.02 that is too large for d_model = 4096. The two projections that write into the
residual stream (attention output, SwiGLU down) use sigma / sqrt(2 * n_layers) (the GPT-2 /
Megatron scaling): the 2 * n_layers block updates then add up to a residual change of the same
size whatever the depth. The input embedding is drawn with std 1 (as torchtitan does), so the
residual stream starts at unit scale and the block updates are small perturbations of the token
signal at any depth. The output head uses sigma (initial logits of std ~0.6, loss near ln(vocab)).
Norm weights start at 1. ``init_std`` overrides sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .attention import resolve_backend
from .config import ModelConfig
from .head import OutputHead, RowLoss
from .kv_cache import InferenceContext, KVCache
from .layers import Embedding, Linear, RMSNorm, SwiGLU
from .rope import apply_rope, rope_angles


def init_stds(cfg: ModelConfig) -> tuple[float, float]:
    """(sigma for input-side matrices, sigma for residual-output projections)."""
    std = cfg.init_std if cfg.init_std is not None else math.sqrt(2.0 / (5.0 * cfg.d_model))
    return std, std / math.sqrt(2.0 * cfg.n_layers)


EMBED_STD = 1.0


@dataclass
class AttentionInputs:
    """What every layer's attention needs, computed once per forward."""

    cos: torch.Tensor
    sin: torch.Tensor
    backend: Any
    prepared: Any  # the backend's mask / cu_seqlens, or None
    # A cached forward (see kv_cache): per layer, keys/values of other positions (RoPE applied)
    # that the new tokens also attend to; and a list that collects each layer's new keys/values.
    past: Optional[KVCache] = None
    collect: Optional[list] = None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int = 0) -> None:
        super().__init__()
        self.layer_id = layer_id
        std, out_std = init_stds(cfg)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, std)
        self.k_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, std)
        self.v_proj = Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, std)
        self.o_proj = Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, out_std)

    def forward(self, x: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, attn.cos, attn.sin), apply_rope(k, attn.cos, attn.sin)
        if attn.collect is not None:
            attn.collect.append((k, v))
        if attn.past is not None:
            k = torch.cat([attn.past.keys[self.layer_id], k], dim=1)
            v = torch.cat([attn.past.values[self.layer_id], v], dim=1)
        out = attn.backend(q, k, v, attn.prepared)
        return self.o_proj(out.reshape(b, s, self.n_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int = 0) -> None:
        super().__init__()
        std, out_std = init_stds(cfg)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_hidden_size, std, out_std)

    def forward(self, x: torch.Tensor, attn: AttentionInputs) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), attn)
        return x + self.ffn(self.ffn_norm(x))


class LLaDAModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        std, _ = init_stds(cfg)
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, EMBED_STD)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = OutputHead(cfg.d_model, cfg.vocab_size, std)
        # How each layer is called: set from outside (e.g. activation checkpointing by the
        # trainer) without changing the module tree, so parameter names never change.
        self.layer_runner: Optional[Callable[[nn.Module, torch.Tensor, AttentionInputs], torch.Tensor]] = None

    def init_weights(self) -> None:
        """Re-draw every parameter (e.g. after ``to_empty`` from the meta device)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(
        self,
        input_ids: torch.Tensor,
        doc_ids: Optional[torch.Tensor] = None,
        logits_mask: Optional[torch.Tensor] = None,
        *,
        causal: bool = False,
        cache: Optional[InferenceContext] = None,
        targets: Optional[torch.Tensor] = None,
        row_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor | RowLoss:
        """Logits for every position, shape (batch, seq, vocab); or, given targets, their loss.

        doc_ids: optional (batch, seq) document ids; attention stays within each document.
        logits_mask: optional (batch, seq) bool, or the (n,) long indices of the same positions in
            the flattened (batch * seq) order; then only those positions go through the output
            head and the result is (n_selected, vocab) in row-major order. The diffusion losses
            score masked positions only, so this skips the head for the rest. Indices computed on
            the host keep the forward free of device-to-host synchronisation (a boolean mask on
            an accelerator must be counted there first).
        causal: a left-to-right mask instead of bidirectional attention (the autoregressive
            baseline; LLaDA itself never sets it).
        cache: inference only (the fast sampler): an InferenceContext giving the tokens' RoPE
            positions, cached keys/values they also attend to, the key padding mask, a list that
            collects each layer's keys/values, and the attention backend for the call. The
            context replaces doc_ids and causal (padding is masked through its key mask).
        targets: optional (n_selected,) long, the token each selected position (all positions
            without logits_mask) should predict. The head then returns a RowLoss (head.py: the
            loss, per-row cross-entropy and correctness) computed in chunks of rows, never the
            full logits; row_weights (n_selected,) make the loss sum_r w_r CE_r with the cheaper
            fused gradient, without them each row's CE is differentiable.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
        device = input_ids.device
        h = self.embed(input_ids)
        positions = None if cache is None else cache.positions
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=device)
        cos, sin = rope_angles(positions.to(device), self.config.head_dim, self.config.rope_theta)
        # Under autocast the projections produce the autocast dtype, not the weights' dtype:
        # the kernel choice must follow what q, k and v will be.
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else h.dtype
        if cache is None:
            backend = resolve_backend(self.config.attention, device, dtype, causal, self.config.head_dim)
            prepared = backend.prepare(None if doc_ids is None else doc_ids.to(device), input_ids.shape[1], device)
            attn = AttentionInputs(cos, sin, backend, prepared)
        else:
            if doc_ids is not None or causal:
                raise ValueError("a forward with an inference context is bidirectional and masks padding through "
                                 "the context's key mask: do not also give doc_ids or causal=True")
            backend = resolve_backend(cache.attention, device, dtype, False, self.config.head_dim)
            prepared = None if cache.key_mask is None else cache.key_mask.to(device)
            attn = AttentionInputs(cos, sin, backend, prepared, cache.past, cache.collect)
        for layer in self.layers:
            h = layer(h, attn) if self.layer_runner is None else self.layer_runner(layer, h, attn)
        h = self.norm(h)
        if logits_mask is not None:
            logits_mask = logits_mask.to(device)
            h = h[logits_mask] if logits_mask.dtype == torch.bool else h.reshape(-1, h.shape[-1]).index_select(0, logits_mask)
        if targets is None:
            return self.head(h)
        return self.head(h.reshape(-1, h.shape[-1]), targets.to(device).reshape(-1),
                         None if row_weights is None else row_weights.to(device).reshape(-1))


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> LLaDAModel:
    """Build on a device; ``"meta"`` gives shapes and counts without allocating memory."""
    if device is None:
        return LLaDAModel(cfg)
    with torch.device(device):
        return LLaDAModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
