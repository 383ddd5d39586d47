"""A memory planner: micro batch, activation checkpointing and offload for a preset on N GPUs.

    llada-ds info --preset llada-8b --gpus 8 --gpu-memory 80 [--lora R] [--seq-len L]

Memory per GPU of one training step = model states + activations of the micro batch + a
reserve. Where each term comes from:
- model states of full training (pre-training, SFT): DeepSpeed's own ZeRO-3 estimator
  (`estimate_zero3_model_states_mem_needs`: bf16 parameters and gradients, fp32 master weights and
  Adam moments, partitioned over the GPUs, plus 4 bytes per parameter of the largest layer for
  the gathered working copy and its gradient), for three placements (nothing / the optimizer /
  optimizer and parameters offloaded to the CPU);
- model states of LoRA: our formula in the same terms (`lora_states`): the frozen base in bf16,
  partitioned, the adapters at 18 bytes per parameter, DeepSpeed's largest-layer allowance;
- activations and the head: our model of what this code keeps for the backward
  (model/sizing.py: `activation_bytes`), per token and layer, measured: it reproduces the peak
  memory of real forward + backward steps on CPU within a few percent (tests/train/test_planner.py);
  on GPU it assumes flash attention (k and v at the key/value heads' width) and bf16; the head
  is the chunked one (model/head.py) at its worst case, every token scored;
- a reserve of RESERVE of the GPU for the CUDA context, communication buffers, the allocator's
  fragmentation and temporary buffers (an assumption, not a measurement).
The recommendation is the first placement, in the order of the table, that fits micro batch >= 1:
no offload before offload (offload moves optimizer steps or parameter gathers over PCIe), no
checkpointing before checkpointing when it fits micro batch >= MIN_MICRO_WITHOUT_CHECKPOINTING
(checkpointing recomputes the forward: about a third more compute), else checkpointing with
the largest micro batch that fits. The GPU figures are predictions until checked on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

from ..errors import ConfigError
from ..lora import TARGETS, lora_parameter_count
from ..model.config import ModelConfig
from ..model.sizing import ParameterCount, activation_bytes, count

GIB = 1024**3
RESERVE = 0.10  # share of the GPU's memory kept free (CUDA context, NCCL, fragmentation, temporaries)
MIN_MICRO_WITHOUT_CHECKPOINTING = 2
MAX_MICRO = 256
PLACEMENTS = (("none", False, False), ("optimizer", True, False), ("optimizer+params", True, True))


def lora_parameters(cfg: ModelConfig, rank: int, targets: tuple[str, ...] = TARGETS) -> int:
    """Trainable parameters of rank-r LoRA on the targeted block matrices (default all seven) of
    every layer: r x (in + out) per matrix, from the shapes alone."""
    return lora_parameter_count(cfg, rank, targets)


@dataclass(frozen=True)
class States:
    """Model states per GPU (and per node on the CPU) for one placement."""

    placement: str  # "none", "optimizer" or "optimizer+params" offloaded
    gpu_bytes: int
    cpu_bytes: int  # per node
    source: str  # "DeepSpeed estimator" or "our formula"


def full_states(params: ParameterCount, n_gpus: int, per_node: int) -> list[States]:
    """Full training (all parameters trainable): DeepSpeed's estimator."""
    out = []
    for name, offload_opt, offload_params in PLACEMENTS:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            params.total, params.largest_layer, num_gpus_per_node=per_node, num_nodes=n_gpus // per_node,
            cpu_offload=offload_opt, cpu_offload_params=offload_params, zero_init=True)
        out.append(States(name, int(gpu), int(cpu), "DeepSpeed estimator"))
    return out


def lora_states(params: ParameterCount, trainable: int, n_gpus: int, per_node: int) -> list[States]:
    """LoRA: the frozen base in bf16 (2 bytes per parameter), the adapters at 18 bytes (bf16 weight
    and gradient, fp32 master and two Adam moments), partitioned over the GPUs, and DeepSpeed's
    allowance of 4 bytes per parameter of the largest layer; offloading moves the adapters'
    optimizer state (and then the base's partitions) to the CPU, as DeepSpeed's estimator does."""
    gather, base = 4 * params.largest_layer, 2 * params.total
    nodes = n_gpus // per_node
    rows = {
        "none": (gather + (base + 18 * trainable) // n_gpus, 0),
        "optimizer": (gather + (base + 2 * trainable) // n_gpus, 16 * trainable // nodes),
        "optimizer+params": (gather, (base + 18 * trainable) // nodes),
    }
    return [States(name, *rows[name], "our formula") for name, _, _ in PLACEMENTS]


@dataclass(frozen=True)
class Option:
    states: States
    checkpointing: bool
    micro_batch: int  # the largest that fits (0: none)
    activation_bytes: int  # at that micro batch (at 1 when none fits)
    total_bytes: int


@dataclass(frozen=True)
class Plan:
    mode: str  # "pre-training and SFT" or "LoRA rank R (...)"
    options: list[Option]
    recommended: Optional[Option]
    usable_bytes: int


def plan(cfg: ModelConfig, states: list[States], seq_len: int, gpu_bytes: int, mode: str,
         extra_activation: Callable[[int], int] = lambda tokens: 0) -> Plan:
    """Largest micro batch of each (placement, checkpointing) that fits gpu_bytes less the reserve.

    extra_activation(tokens): bytes a method adds to the activations (LoRA's rank-r intermediates).
    """
    usable = int(gpu_bytes * (1 - RESERVE))

    def act(micro: int, ckpt: bool) -> int:
        return activation_bytes(cfg, seq_len, micro, ckpt) + extra_activation(seq_len * micro) * (
            1 if ckpt else cfg.n_layers)

    options = []
    for st in states:
        for ckpt in (False, True):
            micro = 0
            while micro < MAX_MICRO and st.gpu_bytes + act(micro + 1, ckpt) <= usable:
                micro += 1
            a = act(max(micro, 1), ckpt)
            options.append(Option(st, ckpt, micro, a, st.gpu_bytes + a))
    chosen = None
    for st in states:
        off, on = (o for o in options if o.states is st)
        if off.micro_batch >= MIN_MICRO_WITHOUT_CHECKPOINTING:
            chosen = off
        elif on.micro_batch >= 1:
            chosen = on
        if chosen:
            break
    return Plan(mode, options, chosen, usable)


def plans(cfg: ModelConfig, n_gpus: int, gpu_memory_gb: float, seq_len: Optional[int] = None,
          lora_rank: int = 0, gpus_per_node: int = 8, lora_targets: tuple[str, ...] = TARGETS) -> list[Plan]:
    """Full training (pre-training and SFT: the same memory at the same sequence length, an SFT
    batch never scores more rows than a pre-training one), and LoRA of lora_targets when lora_rank > 0."""
    seq_len = seq_len or cfg.max_seq_len
    per_node = min(n_gpus, gpus_per_node)
    if n_gpus <= 0 or n_gpus % per_node:
        raise ConfigError(f"--gpus {n_gpus} must be positive and fill nodes of --gpus-per-node {gpus_per_node}")
    if gpu_memory_gb <= 0:
        raise ConfigError(f"--gpu-memory {gpu_memory_gb} must be positive (GB per GPU)")
    params = count(cfg)
    gpu_bytes = int(gpu_memory_gb * 10**9)
    full = full_states(params, n_gpus, per_node)
    out = [plan(cfg, full, seq_len, gpu_bytes, "pre-training and SFT")]
    if lora_rank:
        trainable = lora_parameters(cfg, lora_rank, lora_targets)
        # Per adapted matrix and token: the rank-r intermediate (bf16) the second factor keeps.
        extra = lambda tokens: tokens * len(lora_targets) * lora_rank * 2  # noqa: E731
        out.append(plan(cfg, lora_states(params, trainable, n_gpus, per_node), seq_len, gpu_bytes,
                        f"LoRA rank {lora_rank} ({trainable:,} trainable parameters)", extra))
    return out


def describe_plans(cfg: ModelConfig, n_gpus: int, gpu_memory_gb: float, seq_len: Optional[int] = None,
                   lora_rank: int = 0, gpus_per_node: int = 8, lora_targets: tuple[str, ...] = TARGETS) -> str:
    """The planner's part of `llada-ds info`."""
    seq_len = seq_len or cfg.max_seq_len
    lines = [f"  memory plan: {n_gpus} GPU(s) of {gpu_memory_gb:g} GB, sequences of {seq_len}, bf16, ZeRO-3 "
             f"({100 * RESERVE:.0f}% of each GPU kept free; model states: DeepSpeed's estimator, LoRA's our "
             "formula; activations and head: our measured model)"]
    for p in plans(cfg, n_gpus, gpu_memory_gb, seq_len, lora_rank, gpus_per_node, lora_targets):
        lines.append(f"  {p.mode}:")
        lines.append(f"    {'offloaded':<17} {'checkpointing':<14} {'micro batch':>11} {'states GiB':>11} "
                     f"{'activations GiB':>16} {'total GiB':>10}")
        for o in p.options:
            mark = "  <- recommended" if o is p.recommended else ""
            micro = str(o.micro_batch) if o.micro_batch else "none fits"
            lines.append(f"    {o.states.placement:<17} {'yes' if o.checkpointing else 'no':<14} {micro:>11} "
                         f"{o.states.gpu_bytes / GIB:11.2f} {o.activation_bytes / GIB:16.2f} "
                         f"{o.total_bytes / GIB:10.2f}{mark}")
        if p.recommended is None:
            lines.append(f"    nothing fits {p.usable_bytes / GIB:.1f} GiB per GPU: more GPUs, shorter sequences "
                         "or a smaller model")
        else:
            r = p.recommended
            lines.append(f"    recommended: micro batch {r.micro_batch}, activation checkpointing "
                         f"{'on' if r.checkpointing else 'off'}, offload {r.states.placement}"
                         + (f" ({r.states.cpu_bytes / GIB:.0f} GiB CPU memory per node)" if r.states.cpu_bytes else ""))
    return "\n".join(lines)
