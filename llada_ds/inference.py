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
    objective: Optional[dict] = None  # the run's objective config (noise seed, eps), for checkpoints

    def noise(self):
        """The fixed noise of the run's validation: its objective's seed and eps, no random-length
        cut (a Hugging Face folder has no run: the defaults)."""
        from .diffusion import NoiseConfig

        objective = self.objective or {}
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
    """device: default cuda when available, else cpu; dtype: bf16 | fp32 (default bf16 on cuda)."""
    import torch

    from .hf.adapter import DTYPES

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = dtype or ("bf16" if dev.type == "cuda" else "fp32")
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    loaded = _load(Path(path), tokenizer, DTYPES[name])
    loaded.model = loaded.model.to(device=dev, dtype=DTYPES[name]).eval()
    return loaded


def _load(path: Path, tokenizer: Optional[str], dtype) -> LoadedModel:
    """dtype: a Hugging Face folder's weights are cast to it while read (never a full fp32 copy of
    a bf16 model first)."""
    if (path / "config.json").is_file():
        from .hf.adapter import load_llada_folder

        model, _ = load_llada_folder(path, dtype)
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
    return LoadedModel(model, tok, "checkpoint", state["step"], state["config"]["data"],
                       state["config"].get("objective"))
