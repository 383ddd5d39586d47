"""LLaDA mask predictor for transformers (written by llada-ds; self-contained: torch + transformers).

A LLaMA-style Transformer without the causal mask: pre-norm RMSNorm (normalised in fp32, cast back,
then scaled), rotary embeddings in the half-split form computed in fp32, SwiGLU, untied output
head, no biases. The logit at position i predicts the token at position i (no shift). Attention
is bidirectional; `attention_mask` (1 = token, 0 = padding) hides padding from every position.
Kernels: torch SDPA (non-causal), or flash-attn when installed, on CUDA in fp16/bf16 and without
padding.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig


class LLaDARMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def _rope(positions, head_dim, theta, device):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = positions.to(device=device, dtype=torch.float32)[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x, cos, sin):
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


try:  # optional; transformers' import check skips try blocks
    from flash_attn import flash_attn_func
except Exception:
    flash_attn_func = None


class LLaDABlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, h, kv = config.d_model, config.n_heads, config.n_kv_heads
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, d // h
        self.attn_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv * self.head_dim, bias=False)
        self.attn_out = nn.Linear(h * self.head_dim, d, bias=False)
        self.ff_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)

    def attention(self, x, cos, sin, key_mask):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if key_mask is None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and flash_attn_func:
            out = flash_attn_func(q, k, v, causal=False)
        else:
            groups = self.n_heads // self.n_kv_heads
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=key_mask, is_causal=False).transpose(1, 2)
        return self.attn_out(out.reshape(b, s, self.n_heads * self.head_dim))

    def forward(self, x, cos, sin, key_mask):
        x = x + self.attention(self.attn_norm(x), cos, sin, key_mask)
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDATransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.embedding_size, config.d_model),
            blocks=nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            ln_f=LLaDARMSNorm(config.d_model, config.rms_norm_eps),
            ff_out=nn.Linear(config.d_model, config.embedding_size, bias=False),
        ))

    def forward(self, input_ids, attention_mask=None):
        t = self.transformer
        x = t.wte(input_ids)
        cos, sin = _rope(torch.arange(input_ids.shape[1]), self.config.d_model // self.config.n_heads,
                         self.config.rope_theta, input_ids.device)
        key_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_mask = attention_mask.bool()[:, None, None, :]
        for block in t.blocks:
            x = block(x, cos, sin, key_mask)
        return t.ff_out(t.ln_f(x))


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]

    def __init__(self, config):
        super().__init__(config)
        self.model = LLaDATransformer(config)
        self.post_init()

    def _init_weights(self, module):
        # Only for weights a checkpoint does not provide (a fresh model): small normal init.
        std = 1.0 / math.sqrt(self.config.d_model)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LLaDARMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def forward(self, input_ids, attention_mask=None, labels=None, return_dict=True, **kwargs):
        logits = self.model(input_ids, attention_mask)
        if not return_dict:
            return (logits,)
        return CausalLMOutputWithPast(logits=logits)
