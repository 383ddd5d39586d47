"""Memory of training a model preset on N GPUs, as `llada-ds info` prints it.

Model states (parameters, gradients, Adam) under ZeRO-3 come from DeepSpeed's own estimator; the
activation figure is our model of what this code keeps (llada_ds/model/sizing.py, checked against
measured peaks); the planner (planner.py) combines them. `measure_cpu_memory` is how the
activation model was checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

from ..errors import ConfigError
from ..model.config import ModelConfig
from ..model.sizing import ParameterCount, activation_bytes_per_sequence, count, train_flops_per_token

GIB = 1024**3


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
        f"  ZeRO-3 model states on {n_gpus} GPU(s), "
        + (f"{gpus_per_node} per node" if n_gpus >= gpus_per_node else f"all on one node (of {gpus_per_node} GPUs)")
        + " (DeepSpeed estimator, "
        "bf16 + fp32 Adam, zero.Init):",
    ]
    for row in zero3_model_state_memory(params, n_gpus, gpus_per_node):
        lines.append(
            f"    {row.label:<30} {row.gpu_bytes / GIB:8.2f} GiB per GPU   {row.cpu_bytes / GIB:8.2f} GiB CPU per node"
        )
    ckpt = activation_bytes_per_sequence(cfg, seq_len, checkpointing=True)
    full = activation_bytes_per_sequence(cfg, seq_len, checkpointing=False)
    lines.append(
        f"  activations per sequence of {seq_len} (bf16, our measured model, half the tokens scored): "
        f"{ckpt / GIB:.2f} GiB with activation checkpointing, {full / GIB:.2f} GiB without; --gpu-memory GB plans "
        "the micro batch"
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class MeasuredMemory:
    peak: int  # highest bytes allocated above what was allocated when fn started
    retained: int  # bytes still allocated by fn when it returned


def measure_cpu_memory(fn: Callable[[], object]) -> MeasuredMemory:
    """Peak and retained bytes of CPU tensor memory allocated while fn runs (torch's profiler
    records every allocation and free, forward and backward alike; nothing is sampled)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return MeasuredMemory(peak, level)
