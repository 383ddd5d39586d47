"""LoRA adapters on the plain model, through peft: one place for everything LoRA.

    spec = lora_spec(rank=16, alpha=32, dropout=0.0, targets=["all-linear"])
    inject_lora(model, spec, seed)        # in place: adapters on the targeted matrices, all else frozen
    with adapters_disabled(engine): ...   # the same model without its adapters (a frozen reference)
    merge_adapters(model)                 # W + (alpha / rank) B A in place of each adapted matrix

Targets are named as in LLaDA's released checkpoints (`q_proj`, `k_proj`, `v_proj`, `attn_out`,
`ff_proj`, `up_proj`, `ff_out`; docs/llada.md, section 9), `all-linear` is all seven. The block's
`ff_out` (the down projection) is a target; the output head, which shares the released name, never
is. A name that is not one of these is an error naming the valid ones: peft itself would skip a
name that matches no module, which is how LoRA with Llama's names ends up training half of the
intended matrices.

Injection works on the plain model and on one built under DeepSpeed's zero.Init, whose weights are
already ZeRO-3 shards: peft reads a Linear's shape from its in/out features, never from its weight,
and the new adapter matrices are ordinary tensors that deepspeed.initialize partitions like any
parameter created after construction. Adapters are drawn from a generator seeded with the run's
seed (independent of how the base was built), in the base weights' dtype; B starts at zero, so an
adapted model starts exactly at its base.

peft is imported only when adapters are used (the `lora` extra).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from .errors import CheckpointError, ConfigError
from .model.config import ModelConfig
from .model.hf_layout import BLOCK_LINEARS, from_llada_name, to_llada_module
from .model.sizing import count, train_flops_per_token

ALL_LINEAR = "all-linear"
TARGETS = tuple(BLOCK_LINEARS)  # released names, in block order
ADAPTER = "default"  # peft's name of the one adapter inside each module
# Llama's names for the matrices LLaDA names differently: the commonest wrong guess.
_LLAMA_NAMES = {"o_proj": "attn_out", "gate_proj": "ff_proj", "down_proj": "ff_out"}
_PEFT_PREFIX = "base_model.model."  # how PEFT's saved adapters name the wrapped model's modules


@dataclass(frozen=True)
class LoraSpec:
    """Resolved LoRA settings: rank r, scale alpha / r, dropout on the adapters' input, targets."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]  # released names, in block order

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraSpec":
        return lora_spec(d["rank"], d["alpha"], d.get("dropout", 0.0), d["targets"])


def resolve_targets(names) -> tuple[str, ...]:
    """Released target names (a list, comma-separated entries allowed, `all-linear` for all seven)
    -> the distinct names in block order; an unknown name is an error listing the valid ones."""
    if isinstance(names, str):
        names = [names]
    wanted = [n.strip() for entry in names for n in str(entry).split(",") if n.strip()]
    if not wanted:
        raise ConfigError(f"lora.targets is empty; valid: {ALL_LINEAR} or any of {', '.join(TARGETS)}")
    for name in wanted:
        if name != ALL_LINEAR and name not in TARGETS:
            hint = f" (LLaDA calls Llama's {name} {_LLAMA_NAMES[name]})" if name in _LLAMA_NAMES else ""
            raise ConfigError(f"lora.targets: {name!r} matches no module{hint}; valid names (LLaDA's released ones): "
                              f"{', '.join(TARGETS)}, or {ALL_LINEAR} for all of them (ff_out is the block's down "
                              "projection, never the output head)")
    return TARGETS if ALL_LINEAR in wanted else tuple(t for t in TARGETS if t in wanted)


def lora_spec(rank: int, alpha: float, dropout: float, targets) -> LoraSpec:
    """Checked settings (errors name the lora.* key); rank must be positive here (0 means no LoRA)."""
    checks = [
        (isinstance(rank, int) and rank > 0, "lora.rank", rank, "must be a positive integer (0 turns LoRA off)"),
        (alpha > 0, "lora.alpha", alpha, "must be positive"),
        (0 <= dropout < 1, "lora.dropout", dropout, "must be in [0, 1)"),
    ]
    for ok, key, value, why in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r} {why}")
    return LoraSpec(rank, float(alpha), float(dropout), resolve_targets(targets))


# -- names ----------------------------------------------------------------------------------------

def module_pattern(targets: tuple[str, ...]) -> str:
    """peft's target_modules for our model: a full-match regex over our module names."""
    return r"layers\.\d+\.(" + "|".join(re.escape(BLOCK_LINEARS[t]) for t in targets) + ")"


def released_module_pattern(targets: tuple[str, ...]) -> str:
    """The same targets in the released model's module names (transformers + LLaDA's modeling
    code): blocks only, so the top-level ff_out (the output head) never matches."""
    return r"model\.transformer\.blocks\.\d+\.(" + "|".join(re.escape(t) for t in targets) + ")"


def is_adapter_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def base_name(name: str) -> str:
    """An adapted model's name of a base parameter -> the plain model's name."""
    return name.replace(".base_layer.", ".")


def to_peft_name(name: str) -> str:
    """layers.N.attn.q_proj.lora_A.default.weight -> PEFT's saved name in the released layout
    (base_model.model.model.transformer.blocks.N.q_proj.lora_A.weight)."""
    m = re.fullmatch(r"(.+)\.(lora_[AB])\." + ADAPTER + r"\.weight", name)
    if m is None:
        raise KeyError(f"{name!r} is not a LoRA adapter parameter")
    return f"{_PEFT_PREFIX}{to_llada_module(m.group(1))}.{m.group(2)}.weight"


def from_peft_name(name: str) -> str:
    """The inverse of to_peft_name."""
    m = re.fullmatch(re.escape(_PEFT_PREFIX) + r"(.+)\.(lora_[AB])\.weight", name)
    if m is None:
        raise KeyError(f"{name!r} is not a PEFT LoRA tensor name of a LLaDA model")
    return f"{from_llada_name(m.group(1) + '.weight').removesuffix('.weight')}.{m.group(2)}.{ADAPTER}.weight"


# -- sizes ----------------------------------------------------------------------------------------

def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each block matrix, by released name."""
    d, q, kv, f = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_hidden_size
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "attn_out": (q, d), "ff_proj": (d, f),
            "up_proj": (d, f), "ff_out": (f, d)}


def lora_parameter_count(cfg: ModelConfig, rank: int, targets: tuple[str, ...]) -> int:
    """Trainable parameters: r (in + out) per adapted matrix (A is r x in, B is out x r)."""
    shapes = linear_shapes(cfg)
    return cfg.n_layers * sum(rank * sum(shapes[t]) for t in targets)


# -- the model ------------------------------------------------------------------------------------

def _tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(model: nn.Module) -> bool:
    return any(is_adapter_name(n) for n, _ in getattr(model, "module", model).named_parameters())


def inject_lora(model: nn.Module, spec: LoraSpec, seed: int) -> nn.Module:
    """Put adapters on the targeted matrices of every block of our model, in place; freeze the rest.

    The model may be plain, on the meta device, or built under zero.Init (weights already ZeRO-3
    shards). Returns the same model object.
    """
    from peft import LoraConfig, inject_adapter_in_model

    n_layers = model.config.n_layers
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                        target_modules=module_pattern(spec.targets))
    with torch.random.fork_rng(devices=[]):  # the adapters' draws never move the caller's generator
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    adapted = {n for n, _ in _tuner_layers(model)}
    expected = {f"layers.{i}.{BLOCK_LINEARS[t]}" for i in range(n_layers) for t in spec.targets}
    if adapted != expected:  # peft skips what matches nothing: never let that pass silently
        raise ConfigError(f"LoRA adapters landed on {sorted(adapted - expected)[:4]} and missed "
                          f"{sorted(expected - adapted)[:4]}; valid targets: {', '.join(TARGETS)}")
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_name(name))
        if is_adapter_name(name) and p.is_floating_point():
            # The adapters in the base weights' dtype (peft already moves them so; the trainer
            # refuses a model of mixed dtypes).
            base = model.get_parameter(re.sub(r"\.lora_[AB]\..*", ".base_layer.weight", name))
            p.data = p.data.to(base.dtype)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The same model with its adapters switched off: the frozen base, e.g. the reference model of a
    preference objective. Takes the plain model or a DeepSpeed engine (its `.module`); yields the
    model. Use it under torch.no_grad(): nothing inside should train. The parameters'
    requires_grad flags are restored on exit, so training continues as before.

        with torch.no_grad(), adapters_disabled(engine):
            ref_logits = engine(input_ids)
    """
    module = getattr(model, "module", model)
    layers = [m for _, m in _tuner_layers(module)]
    if not layers:
        raise ConfigError("adapters_disabled: the model has no LoRA adapters (lora.rank is 0); the frozen "
                          "reference of a fully fine-tuned model must be a separate copy of its starting weights")
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield module
    finally:
        for m in layers:
            m.enable_adapters(True)
        for p, flag in flags:
            p.requires_grad_(flag)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of an adapted model (plain, not ZeRO-3), by our names."""
    return {n: p.detach() for n, p in model.named_parameters() if is_adapter_name(n)}


def load_adapters(model: nn.Module, adapters: dict[str, torch.Tensor], where: str) -> None:
    """Copy adapter tensors (our names) into an adapted model; every adapter must be given."""
    expected = {n: p for n, p in model.named_parameters() if is_adapter_name(n)}
    missing = sorted(set(expected) - set(adapters))
    unexpected = sorted(set(adapters) - set(expected))
    wrong = [n for n in expected if n in adapters and tuple(adapters[n].shape) != tuple(expected[n].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{where}: adapters do not fit the LoRA settings: missing {missing[:4]}, unexpected "
                              f"{unexpected[:4]}, wrong shape {wrong[:4]}")
    with torch.no_grad():
        for n, p in expected.items():
            p.copy_(adapters[n].to(p.dtype))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold each adapter into its matrix (W + scale B A, peft's own merge, refusing non-finite
    results) and put the plain Linear back: the plain model, same names as before injection."""
    for name, layer in _tuner_layers(model):
        layer.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    return model


def peft_state_dict(adapters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our adapter tensors -> PEFT's adapter_model.safetensors keys in the released layout."""
    return {to_peft_name(n): t for n, t in adapters.items()}


def from_peft_state_dict(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """PEFT's adapter tensors of a LLaDA model (released layout) -> ours."""
    try:
        return {from_peft_name(n): t for n, t in state.items()}
    except KeyError as exc:
        raise CheckpointError(f"{where}: {exc.args[0]}") from None


def peft_config(spec: LoraSpec, base: str = ""):
    """peft's LoraConfig of an adapter for the released model (what adapter_config.json holds)."""
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                      target_modules=released_module_pattern(spec.targets), base_model_name_or_path=base or None)


def lora_train_flops_per_token(cfg: ModelConfig, seq_len: int, spec: LoraSpec) -> float:
    """Training FLOPs per token with frozen base matrices: the 6 N convention less the 2 N of the
    weight gradients that are never computed, plus 6 per adapter parameter (model/sizing.py)."""
    params = count(cfg)
    return (train_flops_per_token(cfg, seq_len, params) - 2.0 * params.matmul
            + 6.0 * lora_parameter_count(cfg, spec.rank, spec.targets))
