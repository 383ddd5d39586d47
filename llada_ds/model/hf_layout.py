"""Our parameter names and model config <-> the released LLaDA Hugging Face layout (docs/llada.md).

The one place that knows LLaDA's names (a state-dict adapter, next to the model it describes; no
file I/O here: llada_ds/weights.py reads folders, llada_ds/hf/ writes them). Both layouts use the
same half-split RoPE and the same q/k/v head order, so tensors map one to one without
permutation; only names and config keys differ.
"""

from __future__ import annotations

import re

from ..errors import ConfigError
from .config import ModelConfig

PREFIX = "model.transformer."
_GLOBAL = {"embed.weight": "wte.weight", "norm.weight": "ln_f.weight", "head.weight": "ff_out.weight"}
_BLOCK = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q_proj.weight": "q_proj.weight",
    "attn.k_proj.weight": "k_proj.weight",
    "attn.v_proj.weight": "v_proj.weight",
    "attn.o_proj.weight": "attn_out.weight",
    "ffn_norm.weight": "ff_norm.weight",
    "ffn.gate_proj.weight": "ff_proj.weight",
    "ffn.up_proj.weight": "up_proj.weight",
    "ffn.down_proj.weight": "ff_out.weight",
}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}
# The block's seven weight matrices by their released module names -> our module paths inside a
# block (what LoRA targets name). The released `ff_out` here is the block's down projection; the
# top-level `ff_out` (the output head) is not a block module and is never among them.
BLOCK_LINEARS = {v.removesuffix(".weight"): k.removesuffix(".weight") for k, v in _BLOCK.items() if "norm" not in k}
_GLOBAL_BACK = {v: k for k, v in _GLOBAL.items()}


def to_llada_name(name: str) -> str:
    if name in _GLOBAL:
        return PREFIX + _GLOBAL[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if not m or m.group(2) not in _BLOCK:
        raise KeyError(f"no LLaDA name for parameter {name!r}")
    return f"{PREFIX}blocks.{m.group(1)}.{_BLOCK[m.group(2)]}"


def from_llada_name(name: str) -> str:
    if not name.startswith(PREFIX):
        raise KeyError(f"{name!r} is not a LLaDA parameter name (expected the {PREFIX} prefix)")
    rest = name[len(PREFIX):]
    if rest in _GLOBAL_BACK:
        return _GLOBAL_BACK[rest]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
    if not m or m.group(2) not in _BLOCK_BACK:
        raise KeyError(f"{name!r} is not a LLaDA parameter name")
    return f"layers.{m.group(1)}.{_BLOCK_BACK[m.group(2)]}"


def to_llada_module(path: str) -> str:
    """A module path of ours (layers.N.attn.q_proj) -> its released path (model.transformer.blocks.N.q_proj)."""
    return to_llada_name(path + ".weight").removesuffix(".weight")


def to_llada_state_dict(state: dict) -> dict:
    return {to_llada_name(k): v for k, v in state.items()}


def from_llada_state_dict(state: dict) -> tuple[dict, list[str]]:
    """(our-named tensors, the names that are not LLaDA parameters)."""
    ours, unexpected = {}, []
    for name, tensor in state.items():
        try:
            ours[from_llada_name(name)] = tensor
        except KeyError:
            unexpected.append(name)
    return ours, unexpected


def llada_config(cfg: ModelConfig, mask_id: int, eos_id: int, pad_id: int) -> dict:
    """The released config.json keys for a model config (auto_map is added by the exporter)."""
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": cfg.d_model,
        "n_heads": cfg.n_heads, "n_kv_heads": cfg.kv_heads, "n_layers": cfg.n_layers,
        "mlp_hidden_size": cfg.ffn_hidden_size, "mlp_ratio": round(cfg.ffn_hidden_size / cfg.d_model, 4),
        "vocab_size": cfg.vocab_size, "embedding_size": cfg.vocab_size, "max_sequence_length": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps, "mask_token_id": mask_id,
        "eos_token_id": eos_id, "pad_token_id": pad_id, "block_type": "llama", "activation_type": "silu",
        "layer_norm_type": "rms", "include_bias": False, "weight_tying": False, "rope": True,
    }


def model_config_from_llada(conf: dict, where: str = "config.json") -> ModelConfig:
    expected = {"block_type": "llama", "activation_type": "silu", "include_bias": False, "weight_tying": False}
    for key, value in expected.items():
        if key in conf and conf[key] != value:
            raise ConfigError(f"{where}: {key}={conf[key]!r}; llada-ds reads LLaDA models with {key}={value!r}")
    try:
        return ModelConfig(
            vocab_size=int(conf.get("embedding_size") or conf["vocab_size"]), d_model=int(conf["d_model"]),
            n_layers=int(conf["n_layers"]), n_heads=int(conf["n_heads"]),
            n_kv_heads=int(conf.get("n_kv_heads") or conf["n_heads"]),
            ffn_hidden_size=int(conf["mlp_hidden_size"]),
            max_seq_len=int(conf.get("max_sequence_length", 4096)),
            rope_theta=float(conf.get("rope_theta", 500000.0)), norm_eps=float(conf.get("rms_norm_eps", 1e-5)),
        )
    except KeyError as exc:
        raise ConfigError(f"{where}: missing the LLaDA config key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: a LLaDA config value is not a number ({exc})") from None
