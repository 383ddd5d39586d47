"""The optimizer's parameter groups: weight decay on matrices and embeddings, none on norm weights.

One definition for the DeepSpeed engine (engine.py), the plain reference loop (plain.py) and the
repair of DeepSpeed's universal-checkpoint loader, which must put each group's settings back.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import OptimSection


def group_weight_decay(weight_decay: float) -> list[float]:
    """The weight decay of each optimizer parameter group, in param_groups' order."""
    return [weight_decay, 0.0]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings; none on norm weights (1-D). Only trainable
    parameters (with LoRA: the adapters, all matrices, so one group); empty groups are left out."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Under zero.Init a parameter's data is an empty shard: its real shape is ds_shape.
        shape = getattr(p, "ds_shape", p.shape)
        (decay if len(shape) >= 2 else no_decay).append(p)
    return [{"params": group, "weight_decay": wd}
            for group, wd in zip((decay, no_decay), group_weight_decay(weight_decay)) if group]


def adamw(model: nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    """torch's AdamW over param_groups with the run config's settings (the plain loop's optimizer;
    the engine builds the same one through DeepSpeed's config)."""
    return torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas),
                             eps=optim.eps)
