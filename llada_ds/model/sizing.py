"""How big a model is and what it costs to train: parameters, FLOPs per token, activation memory.

Parameter counts come from the model itself, built on the meta device (no memory), so they can
never drift from the code. FLOPs follow the convention of docs/design.md: 6 * N_matmul per token for
the weight matrices (forward 2, backward 4; embedding lookups are not matmuls) plus
12 * n_layers * d_model * seq_len for attention scores and values, counted fully because every
position attends to every other (a causal model would count half).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .transformer import build_model


@dataclass(frozen=True)
class ParameterCount:
    total: int
    embedding: int  # the input embedding table (a lookup, no FLOPs)
    largest_layer: int  # most parameters held directly by one module (DeepSpeed's "largest layer")

    @property
    def matmul(self) -> int:
        return self.total - self.embedding


def count(cfg: ModelConfig) -> ParameterCount:
    model = build_model(cfg, device="meta")
    return ParameterCount(
        total=sum(p.numel() for p in model.parameters()),
        embedding=model.embed.weight.numel(),
        largest_layer=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
    )


def analytic_parameter_count(cfg: ModelConfig) -> int:
    """The closed form, as docs/llada.md writes it for the 8B model (tests compare it to count())."""
    d, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * cfg.ffn_hidden_size + 2 * d
    return 2 * cfg.vocab_size * d + cfg.n_layers * per_layer + d


def train_flops_per_token(cfg: ModelConfig, seq_len: int | None = None, params: ParameterCount | None = None) -> float:
    seq_len = seq_len or cfg.max_seq_len
    params = params or count(cfg)
    return 6.0 * params.matmul + 12.0 * cfg.n_layers * cfg.d_model * seq_len


def activation_bytes_per_sequence(
    cfg: ModelConfig, seq_len: int | None = None, checkpointing: bool = True,
    bytes_per_value: int = 2, masked_share: float = 0.5,
) -> int:
    """Approximate activation memory for one sequence of a training step (our own estimate).

    Assumes a flash-style attention kernel (no seq x seq matrix kept). Per token and layer, the
    backward keeps roughly: the two norm inputs and outputs (4 d), q, k, v (d + 2 kv), the
    attention output (d), the two residual outputs (2 d) and four SwiGLU tensors (gate, up,
    silu(gate), product: 4 ffn). With checkpointing only each layer's input (d) is kept, plus one
    layer's full set during its recomputation. The head's logits exist only for masked positions
    (about half on average): bf16 logits plus fp32 copies for the loss and its gradient.
    """
    seq_len = seq_len or cfg.max_seq_len
    d, kv, f = cfg.d_model, cfg.kv_heads * cfg.head_dim, cfg.ffn_hidden_size
    per_layer = (4 * d + d + 2 * kv + d + 2 * d + 4 * f) * bytes_per_value
    if checkpointing:
        layers = cfg.n_layers * d * bytes_per_value + per_layer
    else:
        layers = cfg.n_layers * per_layer
    logits = masked_share * cfg.vocab_size * (bytes_per_value + 4 + 4)
    return int(seq_len * (layers + logits))
