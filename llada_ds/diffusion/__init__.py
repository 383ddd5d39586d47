"""The diffusion process around the mask predictor: counter-based noise and the training losses."""

from .noise import draw_masks, draw_random_length, noise_key
from .objectives import (
    N_BUCKETS, DiffusionBatch, DiffusionLoss, NoiseConfig, autoregressive_loss, check_tokens, diffusion_loss,
    pretrain_batch, sft_batch,
)

__all__ = [
    "draw_masks", "draw_random_length", "noise_key",
    "N_BUCKETS", "DiffusionBatch", "DiffusionLoss", "NoiseConfig", "autoregressive_loss", "check_tokens",
    "diffusion_loss", "pretrain_batch", "sft_batch",
]
