"""The diffusion process around the mask predictor: counter-based noise, the forward (masking)
process, the losses, the objectives the trainer runs (alignment: preference.py for VRPO, grpo.py
for diffu-GRPO, reference.py for their reference model), and the reverse process (samplers)."""

from .losses import (
    N_BUCKETS, DiffusionLoss, autoregressive_loss, diffusion_loss, model_autoregressive_loss, model_diffusion_loss,
    sample_cross_entropy,
)
from .masking import DiffusionBatch, NoiseConfig, check_tokens, pretrain_batch, sft_batch
from .noise import draw_masks, draw_random_length, noise_key
from .objectives import (
    OBJECTIVES, AutoregressiveObjective, Objective, Prepared, PretrainObjective, SFTObjective, StepStats,
    make_objective,
)

__all__ = [
    "draw_masks", "draw_random_length", "noise_key",
    "N_BUCKETS", "DiffusionBatch", "DiffusionLoss", "NoiseConfig", "autoregressive_loss", "check_tokens",
    "diffusion_loss", "model_autoregressive_loss", "model_diffusion_loss", "pretrain_batch", "sample_cross_entropy",
    "sft_batch",
    "OBJECTIVES", "AutoregressiveObjective", "Objective", "Prepared", "PretrainObjective", "SFTObjective", "StepStats",
    "make_objective",
]
