"""The mask predictor: config and presets, the Transformer, attention backends, sizing."""

from .config import ATTENTION_BACKENDS, PRESETS, ConfigError, ModelConfig, get_preset
from .transformer import LLaDAModel, build_model, count_parameters

__all__ = [
    "ATTENTION_BACKENDS", "PRESETS", "ConfigError", "ModelConfig", "get_preset",
    "LLaDAModel", "build_model", "count_parameters",
]
