"""Memory of LoRA fine-tuning a model preset on N GPUs, as `llada-ds info --lora R` prints it.

Our estimate, in the terms of llada_ds/train/memory.py (which covers full training):
- the frozen base in bf16, 2 bytes per parameter, partitioned over the N GPUs by ZeRO-3 (it has
  no gradients and no optimizer state);
- the adapters as DeepSpeed keeps trainable parameters in bf16 mixed precision: bf16 weights,
  fp32 master weights, fp32 gradients and two fp32 Adam moments, 18 bytes per parameter, over N;
- with N > 1, ZeRO-3's working copies of gathered parameters: DeepSpeed's own allowance of
  4 bytes per parameter of the largest layer (the embedding or the output head);
- activations per sequence (llada_ds/model/sizing.py), which LoRA does not shrink: the backward
  still runs through every frozen matrix; plus, per adapted matrix and token, the adapter's rank-r
  intermediate, and with dropout the adapter's own copy of its input and the dropout mask.
The CUDA context, the allocator's fragmentation and temporary buffers come on top: a verdict
"fits" keeps 10% of the GPU free for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lora import LoraSpec, linear_shapes, lora_parameter_count
from ..model.config import ModelConfig
from ..model.sizing import activation_bytes_per_sequence, count

GIB = 1024**3
GPU_80GB = 80 * 10**9  # an "80 GB" GPU (A100 / H100 80GB), in bytes
HEADROOM = 0.10  # share of the GPU left for the CUDA context, fragmentation and temporary buffers
ADAPTER_BYTES_PER_PARAM = 2 + 4 + 4 + 8  # bf16 weight, fp32 master, fp32 gradient, Adam m and v


@dataclass(frozen=True)
class LoraMemory:
    """Bytes per GPU of LoRA fine-tuning (see the module docstring for what each part counts)."""

    n_gpus: int
    seq_len: int
    trainable: int
    total_params: int
    base: int
    adapters: int
    gather: int
    activations_checkpointed: int  # per sequence
    activations_full: int  # per sequence

    def per_gpu(self, micro_batch: int = 1, checkpointing: bool = True) -> int:
        act = self.activations_checkpointed if checkpointing else self.activations_full
        return self.base + self.adapters + self.gather + micro_batch * act


def lora_activation_bytes(cfg: ModelConfig, spec: LoraSpec, seq_len: int, checkpointing: bool,
                          bytes_per_value: int = 2) -> int:
    """What the adapters add to one sequence's activations (bf16): per adapted matrix and token the
    rank-r intermediate, and with dropout a dropped copy of the input plus its mask (1 byte)."""
    shapes = linear_shapes(cfg)
    per_layer = sum(spec.rank * bytes_per_value + (shapes[t][0] * (bytes_per_value + 1) if spec.dropout else 0)
                    for t in spec.targets)
    layers = 1 if checkpointing else cfg.n_layers  # with checkpointing only the recomputed layer keeps them
    return seq_len * per_layer * layers


def lora_memory(cfg: ModelConfig, spec: LoraSpec, n_gpus: int, seq_len: int | None = None) -> LoraMemory:
    seq_len = seq_len or cfg.max_seq_len
    params = count(cfg)
    trainable = lora_parameter_count(cfg, spec.rank, spec.targets)
    return LoraMemory(
        n_gpus=n_gpus, seq_len=seq_len, trainable=trainable, total_params=params.total,
        base=2 * params.total // n_gpus,
        adapters=ADAPTER_BYTES_PER_PARAM * trainable // n_gpus,
        gather=4 * params.largest_layer if n_gpus > 1 else 0,
        activations_checkpointed=activation_bytes_per_sequence(cfg, seq_len, checkpointing=True)
        + lora_activation_bytes(cfg, spec, seq_len, checkpointing=True),
        activations_full=activation_bytes_per_sequence(cfg, seq_len, checkpointing=False)
        + lora_activation_bytes(cfg, spec, seq_len, checkpointing=False),
    )


def fits_one_80gb_gpu(cfg: ModelConfig, spec: LoraSpec, seq_len: int, checkpointing: bool = True) -> tuple[bool, int]:
    """(whether LoRA fine-tuning at micro batch 1 fits one 80 GB GPU with 10% headroom, its bytes)."""
    need = lora_memory(cfg, spec, 1, seq_len).per_gpu(1, checkpointing)
    return need <= (1 - HEADROOM) * GPU_80GB, need


def describe_lora(cfg: ModelConfig, spec: LoraSpec, n_gpus: int, seq_len: int | None = None) -> str:
    """The LoRA part of `llada-ds info --lora R`."""
    m = lora_memory(cfg, spec, n_gpus, seq_len)
    targets = "all-linear" if len(spec.targets) == 7 else ", ".join(spec.targets)
    with_ckpt, without = m.per_gpu(1, True), m.per_gpu(1, False)
    rows = [("frozen base, bf16, partitioned", m.base, ""),
            ("adapters + fp32 master, gradients, Adam", m.adapters, ""),
            ("ZeRO-3 gathered-parameter buffers", m.gather, ""),
            (f"activations per sequence of {m.seq_len}", m.activations_checkpointed,
             f" with activation checkpointing, {m.activations_full / GIB:.2f} GiB without"),
            ("total at micro batch 1", with_ckpt, f" with activation checkpointing, {without / GIB:.2f} GiB without")]
    lines = [f"  LoRA rank {spec.rank} on {targets} (every block): {m.trainable:,} trainable parameters "
             f"({100 * m.trainable / m.total_params:.2f}% of {m.total_params:,}); the base is frozen",
             f"  LoRA fine-tuning memory per GPU on {n_gpus} GPU(s), ZeRO-3 (our estimate):"]
    lines += [f"    {label:<42}{value / GIB:8.2f} GiB{tail}" for label, value, tail in rows]
    for ckpt in (True, False):
        ok, need = fits_one_80gb_gpu(cfg, spec, m.seq_len, ckpt)
        lines.append(f"  one 80 GB GPU, seq {m.seq_len}, micro batch 1, "
                     f"{'with' if ckpt else 'without'} activation checkpointing: "
                     f"{'fits' if ok else 'does not fit'} ({need / 1e9:.1f} GB of 80, {100 * HEADROOM:.0f}% kept free)")
    return "\n".join(lines)
