"""A trained model and its tokenizer, ready for sampling and evaluation, from wherever it lives.

- a llada-ds run directory or checkpoint (any world size): weights through llada_ds/weights.py;
  the tokenizer named in the run's config (its fingerprint must match the one trained with);
- a Hugging Face folder in the released LLaDA layout (ours after export, or LLaDA's own): config
  and weights read into our model (no remote code runs); the folder's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .data.tokenizer import Tokenizer
from .diffusion import NoiseConfig
from .errors import CheckpointError, ConfigError
from .model import LLaDAModel
from .weights import dtype_of, load_model


@dataclass
class LoadedModel:
    model: LLaDAModel
    tokenizer: Tokenizer
    source: str  # "checkpoint" or "huggingface"
    step: Optional[int] = None
    config: Optional[dict] = None  # the run's config (checkpoints)

    @property
    def data(self) -> dict:
        return (self.config or {}).get("data", {})

    def noise(self) -> NoiseConfig:
        """The fixed noise of the run's validation: its objective's seed and eps, no random-length
        cut (a Hugging Face folder has no run: the defaults)."""
        objective = (self.config or {}).get("objective") or {}
        defaults = NoiseConfig()
        return NoiseConfig(seed=objective.get("noise_seed", defaults.seed), eps=objective.get("eps", defaults.eps),
                           random_length_prob=0.0)


def cut_at(row: list[int], stops) -> list[int]:
    """A generated row up to (not including) its first stop id (EOS, end of turn)."""
    for i, t in enumerate(row):
        if t in stops:
            return row[:i]
    return row


def load_for_inference(path: str | Path, tokenizer: Optional[str] = None, device: Optional[str] = None,
                       dtype: Optional[str] = None) -> LoadedModel:
    """device: default cuda when available, else cpu; dtype: bf16 | fp32 (default bf16 on cuda).
    A Hugging Face folder's weights are cast while read (a bf16 model is never held in fp32)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = dtype_of(dtype or ("bf16" if dev.type == "cuda" else "fp32"))
    model, source = load_model(path, torch_dtype)  # a path or an object-store URI
    model = model.to(device=dev, dtype=torch_dtype).eval()
    if source.kind == "huggingface":
        tok = Tokenizer.load(tokenizer or source.path)
        if tok.vocab_size > model.config.vocab_size:
            raise ConfigError(f"tokenizer of {tokenizer or source.path} has {tok.vocab_size} tokens, the model "
                              f"{model.config.vocab_size}")
        return LoadedModel(model, tok, "huggingface")
    state = source.run_state
    tok = Tokenizer.load(tokenizer or source.tokenizer_path)
    if tok.fingerprint != state["tokenizer"]:
        raise CheckpointError(f"tokenizer {tok.path} ({tok.fingerprint}) is not the one the model was trained with "
                              f"({state['tokenizer']}); pass --tokenizer")
    return LoadedModel(model, tok, "checkpoint", state["step"], state.get("config"))
