"""Load a trained model for sampling and evaluation, from wherever it lives.

- a llada-ds run directory or checkpoint (any world size): weights consolidated with DeepSpeed's
  own tool; the tokenizer named in the run's config;
- a Hugging Face folder in the released LLaDA layout (ours after export, or LLaDA's own): config
  and weights read into our model through the adapter (no remote code runs); its tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .data.tokenizer import Tokenizer
from .model import LLaDAModel


@dataclass
class LoadedModel:
    model: LLaDAModel
    tokenizer: Tokenizer
    source: str  # "checkpoint" or "huggingface"
    step: Optional[int] = None
    data: Optional[dict] = None  # the run's data config, for checkpoints


def load_for_inference(path: str | Path, tokenizer: Optional[str] = None, device: Optional[str] = None,
                       dtype: Optional[str] = None) -> LoadedModel:
    """device: default cuda when available, else cpu; dtype: bf16 | fp32 (default bf16 on cuda)."""
    loaded = _load(Path(path), tokenizer)
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = dtype or ("bf16" if dev.type == "cuda" else "fp32")
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(dtypes)}")
    loaded.model = loaded.model.to(device=dev, dtype=dtypes[name]).eval()
    return loaded


def _load(path: Path, tokenizer: Optional[str]) -> LoadedModel:
    if (path / "config.json").is_file():
        from .hf.adapter import load_llada_folder

        model, _ = load_llada_folder(path)
        tok = Tokenizer.load(tokenizer or path)
        if tok.vocab_size > model.config.vocab_size:
            raise ValueError(f"tokenizer of {tokenizer or path} has {tok.vocab_size} tokens, the model "
                             f"{model.config.vocab_size}")
        return LoadedModel(model, tok, "huggingface")
    from .train.checkpoint import load_plain_model

    model, state = load_plain_model(path)
    tok = Tokenizer.load(tokenizer or state["config"]["data"]["tokenizer"])
    if tok.fingerprint != state["tokenizer"]:
        raise ValueError(f"tokenizer {tok.path} ({tok.fingerprint}) is not the one the model was trained with "
                         f"({state['tokenizer']}); pass --tokenizer")
    return LoadedModel(model, tok, "checkpoint", state["step"], state["config"]["data"])
