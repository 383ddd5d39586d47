"""Our state dict and config <-> the released LLaDA Hugging Face layout (LLADA_SPEC.md).

The one place that knows LLaDA's names. Both layouts use the same half-split RoPE and the same
q/k/v head order, so tensors map one to one without permutation; only names and config keys
differ. Reading a released-format folder needs no remote code: the config and the safetensors
(or PyTorch) weights are read directly into our model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..model import ConfigError, LLaDAModel, ModelConfig

# The dtype names the command line takes (--dtype), for loading, casting and export.
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
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


def to_llada_state_dict(state: dict) -> dict:
    return {to_llada_name(k): v for k, v in state.items()}


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


def read_weights(folder: Path) -> dict:
    """All tensors of a Hugging Face folder, sharded or single safetensors (never unpickled)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out = {}
        for f in files:
            out.update(load_file(str(folder / f)))
        return out
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if list(folder.glob("pytorch_model*.bin")):
        raise ConfigError(f"{folder}: only pickled PyTorch weights (pytorch_model*.bin); llada-ds reads safetensors "
                          "only, never unpickles: convert them to safetensors first")
    raise ConfigError(f"{folder}: no weights (model.safetensors or model.safetensors.index.json)")


def load_llada_folder(folder: str | Path, dtype: torch.dtype | None = torch.float32) -> tuple[LLaDAModel, dict]:
    """Our model with the weights of a released-format folder; (model, its config.json).
    dtype None keeps the stored dtype."""
    folder = Path(folder)
    conf_path = folder / "config.json"
    if not conf_path.is_file():
        raise ConfigError(f"{folder}: no config.json")
    conf = json.loads(conf_path.read_text())
    cfg = model_config_from_llada(conf, str(conf_path))
    with torch.device("meta"):
        model = LLaDAModel(cfg)
    theirs = read_weights(folder)
    ours, unexpected = {}, []
    for name, tensor in theirs.items():
        try:
            ours[from_llada_name(name)] = tensor
        except KeyError:
            unexpected.append(name)
    expected = dict(model.named_parameters())
    missing = [to_llada_name(n) for n in expected if n not in ours]
    wrong = [f"{to_llada_name(n)} {tuple(t.shape)} (expected {tuple(expected[n].shape)})"
             for n, t in ours.items() if n in expected and tuple(t.shape) != tuple(expected[n].shape)]
    if missing or unexpected or wrong:
        raise ConfigError(f"{folder}: weights do not fit the config: missing {missing[:6]}, unexpected "
                          f"{unexpected[:6]}, wrong shape {wrong[:6]}")
    model.load_state_dict({k: v if dtype is None else v.to(dtype) for k, v in ours.items()}, assign=True)
    return model.eval(), conf


def import_llada_folder(folder: str | Path, out_dir: str | Path) -> Path:
    """`llada-ds import`: a released-format folder -> a llada-ds weights checkpoint.

    The checkpoint holds weights.safetensors (our names, the folder's dtype), the folder's
    tokenizer (kept as is, with its own mask id) under tokenizer/, and run_state.json (step 0, the
    model shape, the tokenizer fingerprint), so every llada-ds command that takes a checkpoint
    (generate, eval, export, --train.init_from) takes it. Only safetensors are read.
    """
    import shutil

    from safetensors.torch import save_file

    from ..data.storage import LocalStorage
    from ..data.tokenizer import Tokenizer

    folder, out = Path(folder), Path(out_dir)
    model, conf = load_llada_folder(folder, None)  # checks config, names and shapes, naming what is wrong
    cfg = model.config
    tok_dir = out / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens_map")) or f.suffix == ".model"):
            shutil.copyfile(f, tok_dir / f.name)
    tokenizer = Tokenizer.load(tok_dir)
    if "mask_token_id" in conf and conf["mask_token_id"] != tokenizer.special.mask:
        raise ConfigError(f"{folder}: config mask_token_id {conf['mask_token_id']} but the tokenizer's "
                          f"<|mdm_mask|> is {tokenizer.special.mask}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
    state = {"step": 0, "model": cfg.to_dict(), "tokenizer": tokenizer.fingerprint, "imported_from": str(folder),
             "tokens_seen": 0, "data": {"data_fingerprint": "imported"},
             "config": {"data": {"tokenizer": str(tok_dir.resolve())}}}
    LocalStorage(out).write_atomic("run_state.json", (json.dumps(state, indent=1) + "\n").encode())
    return out
