"""How big a model is and what it costs to train: parameters, FLOPs per token, memory per GPU.

Parameter counts come from the model itself, built on the meta device (no memory), so they can
never drift from the code. FLOPs follow the convention of DESIGN.md: 6 * N_matmul per token for
the weight matrices (forward 2, backward 4; embedding lookups are not matmuls) plus
12 * n_layers * d_model * seq_len for attention scores and values, counted fully because every
position attends to every other (a causal model would count half).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError, ModelConfig
from .transformer import build_model

GIB = 1024**3


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
    """The closed form, as LLADA_SPEC.md writes it for the 8B model (tests compare it to count())."""
    d, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * cfg.ffn_hidden_size + 2 * d
    return 2 * cfg.vocab_size * d + cfg.n_layers * per_layer + d


def train_flops_per_token(cfg: ModelConfig, seq_len: int | None = None, params: ParameterCount | None = None) -> float:
    seq_len = seq_len or cfg.max_seq_len
    params = params or count(cfg)
    return 6.0 * params.matmul + 12.0 * cfg.n_layers * cfg.d_model * seq_len


@dataclass(frozen=True)
class ZeroMemory:
    label: str
    gpu_bytes: int  # per GPU
    cpu_bytes: int  # per node


def zero3_model_state_memory(params: ParameterCount, n_gpus: int, gpus_per_node: int = 8) -> list[ZeroMemory]:
    """Parameters, gradients and Adam states per GPU under ZeRO-3, from DeepSpeed's own estimator.

    Three placements: all on GPU, optimizer offloaded to CPU, optimizer and parameters offloaded.
    Mixed precision with fp32 master weights and Adam moments (18 bytes per parameter), zero.Init.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    per_node = min(n_gpus, gpus_per_node)
    if n_gpus % per_node:
        raise ConfigError(
            f"{n_gpus} GPUs do not fill nodes of {gpus_per_node}: pass a --gpus-per-node that divides --gpus"
        )
    nodes = n_gpus // per_node
    rows = []
    for label, offload_opt, offload_params in (
        ("no offload", False, False),
        ("optimizer offloaded", True, False),
        ("optimizer + params offloaded", True, True),
    ):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            params.total, params.largest_layer, num_gpus_per_node=per_node, num_nodes=nodes,
            cpu_offload=offload_opt, cpu_offload_params=offload_params, zero_init=True,
        )
        rows.append(ZeroMemory(label, gpu, cpu))
    return rows


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


def describe(cfg: ModelConfig, name: str, n_gpus: int = 8, gpus_per_node: int = 8, seq_len: int | None = None) -> str:
    """The text `llada-ds info` prints."""
    seq_len = seq_len or cfg.max_seq_len
    params = count(cfg)
    flops = train_flops_per_token(cfg, seq_len, params)
    lines = [
        f"preset {name}",
        f"  shape       layers {cfg.n_layers}, d_model {cfg.d_model}, heads {cfg.n_heads} "
        f"(kv heads {cfg.kv_heads}, head dim {cfg.head_dim}), ffn {cfg.ffn_hidden_size}, "
        f"vocab {cfg.vocab_size}, max len {cfg.max_seq_len}, rope theta {cfg.rope_theta:g}",
        f"  parameters  {params.total:,} (embedding {params.embedding:,}; matmul {params.matmul:,})",
        f"  train FLOPs {flops:.4g} per token at seq {seq_len} "
        f"(6 x {params.matmul:,} + 12 x {cfg.n_layers} x {cfg.d_model} x {seq_len}; attention counted fully)",
        f"  ZeRO-3 model states on {n_gpus} GPU(s), {min(n_gpus, gpus_per_node)} per node (DeepSpeed estimator, "
        "bf16 + fp32 Adam, zero.Init):",
    ]
    for row in zero3_model_state_memory(params, n_gpus, gpus_per_node):
        lines.append(
            f"    {row.label:<30} {row.gpu_bytes / GIB:8.2f} GiB per GPU   {row.cpu_bytes / GIB:8.2f} GiB CPU per node"
        )
    ckpt = activation_bytes_per_sequence(cfg, seq_len, checkpointing=True)
    full = activation_bytes_per_sequence(cfg, seq_len, checkpointing=False)
    lines.append(
        f"  activations per sequence of {seq_len} (bf16, approximate): {ckpt / GIB:.2f} GiB with activation "
        f"checkpointing, {full / GIB:.2f} GiB without; multiply by the micro batch"
    )
    return "\n".join(lines)
