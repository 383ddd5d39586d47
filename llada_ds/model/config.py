"""Shape and numerics of the mask predictor, and the named presets.

The model config describes the network only. Token ids with a meaning (mask, EOS) belong to the
tokenizer and the diffusion objective, not here: the network is the same whatever id means "mask".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError

ATTENTION_BACKENDS = ("auto", "flash", "sdpa", "eager")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_hidden_size: int
    # Grouped-query attention: number of key/value heads; None means n_heads (plain MHA).
    n_kv_heads: int | None = None
    # The training sequence length. RoPE has no table, so longer inputs still run.
    max_seq_len: int = 4096
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    # Which attention kernel runs; see llada_ds.model.attention.
    attention: str = "auto"
    # Standard deviation of the initial weights; None means sqrt(2 / (5 * d_model)).
    init_std: float | None = None

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden_size", "max_seq_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
        if self.n_kv_heads is not None and (
            not isinstance(self.n_kv_heads, int) or isinstance(self.n_kv_heads, bool) or self.n_kv_heads <= 0
        ):
            raise ConfigError(f"model.n_kv_heads must be a positive integer or null, got {self.n_kv_heads!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head dimension d_model/n_heads={self.head_dim} must be even for rotary embeddings"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.kv_heads}"
            )
        if self.attention not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"model.attention={self.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}"
            )
        for key in ("rope_theta", "norm_eps"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"model.{key} must be a positive number, got {value!r}")
        if self.init_std is not None and (not isinstance(self.init_std, (int, float)) or self.init_std <= 0):
            raise ConfigError(f"model.init_std must be a positive number or null, got {self.init_std!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"model config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# LLaDA's released vocabulary (its tokenizer has 126,464 embedding rows).
LLADA_VOCAB = 126464

PRESETS: dict[str, ModelConfig] = {
    # CPU demo and tests: ~5M parameters, grouped KV heads so GQA is exercised everywhere.
    # The vocabulary matches the size of the project's own sentencepiece tokenizer for the demo.
    "tiny": ModelConfig(
        vocab_size=4096, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4,
        ffn_hidden_size=688, max_seq_len=256,
    ),
    # As reported for LLaDA 1B (not verified against released weights: none were released).
    "llada-1b": ModelConfig(
        vocab_size=LLADA_VOCAB, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
        ffn_hidden_size=5634, max_seq_len=4096,
    ),
    # The released LLaDA-8B-Base / -Instruct shape: exactly 8,015,581,184 parameters.
    "llada-8b": ModelConfig(
        vocab_size=LLADA_VOCAB, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
        ffn_hidden_size=12288, max_seq_len=4096,
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None
