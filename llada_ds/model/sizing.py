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
from .head import rows_per_chunk
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


def layer_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 2, expand_kv: bool = False) -> int:
    """Bytes one block keeps for its backward, per token (what autograd saves in this code).

    Each RMSNorm keeps its input in fp32 (the input itself in fp32, an fp32 copy otherwise), the
    fp32 1/rms, the normalised value before the weight and the output after it (the projections'
    input). Attention keeps q, k and v (k and v at the key/value heads' width, or at the query
    heads' when the kernel needs them repeated: SDPA in fp32 or with a mask), its output (which
    o_proj reads as a view) and the fp32 log-sum-exp per head. SwiGLU keeps gate, up, silu(gate)
    and their product. Checked against saved-tensor hooks and measured peaks (tests/train/test_planner.py).
    """
    b, d, f = bytes_per_value, cfg.d_model, cfg.ffn_hidden_size
    kv = d if expand_kv else cfg.kv_heads * cfg.head_dim
    norm = 4 * d + 4 + 2 * b * d
    attention = b * (2 * d + 2 * kv) + 4 * cfg.n_heads
    return 2 * norm + attention + 4 * b * f


def head_bytes(cfg: ModelConfig, rows: int, bytes_per_value: int = 2, weight_grad: bool = False) -> int:
    """Peak bytes of the chunked output head + cross-entropy (model/head.py) over `rows` scored
    positions: one chunk of fp32 logits (plus the logits themselves below fp32), the gradient of
    the head's input (rows x d) and a few per-row vectors. weight_grad adds the head's weight
    gradient, which the weighted loss computes in the forward (under ZeRO-3 it is part of
    DeepSpeed's allowance for the largest layer, gathered with its gradient)."""
    chunk = min(rows, rows_per_chunk(cfg.vocab_size))
    logits = chunk * cfg.vocab_size * (4 + (bytes_per_value if bytes_per_value < 4 else 0))
    out = logits + rows * (cfg.d_model * bytes_per_value + 32)
    return out + (cfg.vocab_size * cfg.d_model * bytes_per_value if weight_grad else 0)


def activation_bytes(cfg: ModelConfig, seq_len: int, micro_batch: int = 1, checkpointing: bool = True,
                     bytes_per_value: int = 2, expand_kv: bool = False, masked_share: float = 1.0,
                     weight_grad: bool = False) -> int:
    """Peak activation bytes of one training step's forward + backward (our model, measured terms).

    Without checkpointing the peak comes at the head, when every block's saved tensors exist; with
    checkpointing each block keeps only its input, and the backward recomputes one block at a
    time (its saved tensors and the gradients flowing through it: the larger of that and the
    forward's peak). The final norm keeps what a block's norm keeps; the head takes
    masked_share x tokens rows (1.0: the worst case, t near 1, that a planner must allow for).
    """
    tokens = seq_len * micro_batch
    layer = layer_bytes_per_token(cfg, bytes_per_value, expand_kv)
    final_norm = 4 * cfg.d_model + 4 + 2 * bytes_per_value * cfg.d_model
    head = head_bytes(cfg, int(masked_share * tokens), bytes_per_value, weight_grad)
    if not checkpointing:
        return tokens * (cfg.n_layers * layer + final_norm) + head
    inputs = tokens * cfg.n_layers * cfg.d_model * bytes_per_value
    forward = inputs + tokens * final_norm + head
    # Recomputing one block in the backward: its saved tensors, plus the gradients alive at once
    # (the block's input and output, two of SwiGLU's width).
    backward = inputs + tokens * (layer + bytes_per_value * (2 * cfg.d_model + 2 * cfg.ffn_hidden_size))
    return max(forward, backward)


def activation_bytes_per_sequence(
    cfg: ModelConfig, seq_len: int | None = None, checkpointing: bool = True,
    bytes_per_value: int = 2, masked_share: float = 0.5,
) -> int:
    """Activation memory for one sequence of a training step (bf16 on GPU: flash attention, k and
    v at the key/value heads' width). See activation_bytes; masked_share is the share of tokens
    the head scores (0.5 on average, 1.0 at worst)."""
    seq_len = seq_len or cfg.max_seq_len
    return activation_bytes(cfg, seq_len, 1, checkpointing, bytes_per_value, masked_share=masked_share)
