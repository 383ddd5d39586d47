"""Wrap the plain model in a DeepSpeed engine: ZeRO-3 construction, config filling, optimizer.

The DeepSpeed JSON owns the ZeRO strategy; every value the run config owns is "auto" there and
filled in here (batch sizes, accumulation, clipping, precision, the optimizer), so the two can
never disagree. A JSON that sets one of those values itself is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import RunConfig
from ..data.batch import split_batch
from ..errors import ConfigError, TrainingError
from ..lora import inject_lora
from ..model import LLaDAModel, ModelConfig
from .optim import group_weight_decay, param_groups

OWNED_BY_RUN_CONFIG = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                       "gradient_clipping")

# Shipped inside the package, so that a non-editable install finds its defaults; the repository's
# top-level ds_configs/ is a link to this folder.
DS_CONFIGS = Path(__file__).resolve().parents[1] / "ds_configs"


def default_ds_config() -> str:
    """The packaged zero3.json (bf16, NCCL) on GPU, cpu.json (fp32, gloo) on CPU."""
    return str(DS_CONFIGS / ("zero3.json" if torch.cuda.is_available() else "cpu.json"))


def load_ds_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"DeepSpeed config {path} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path}: not valid JSON ({exc})") from None


def fill_ds_config(ds: dict, cfg: RunConfig, world: int, source: str = "DeepSpeed config") -> dict:
    """The DeepSpeed config with the run config's values in place of "auto"."""
    ds = json.loads(json.dumps(ds))
    for key in OWNED_BY_RUN_CONFIG:
        if key in ds and ds[key] != "auto":
            raise ConfigError(f"{source}: {key}={ds[key]!r}; the run config owns it, set it to \"auto\"")
    for key in ("optimizer", "scheduler", "fp16"):
        if key in ds:
            raise ConfigError(f"{source}: remove the {key!r} section; the run config owns the optimizer, "
                              "the schedule and the precision (fp16 is not supported: use bf16)")
    t = cfg.train
    ds.update(
        train_batch_size=t.global_batch,
        train_micro_batch_size_per_gpu=t.micro_batch,
        gradient_accumulation_steps=split_batch(t.global_batch, t.micro_batch, world),
        gradient_clipping=cfg.optim.grad_clip,
    )
    bf16 = ds.setdefault("bf16", {})
    if bf16.get("enabled", "auto") not in ("auto", t.precision == "bf16"):
        raise ConfigError(f"{source}: bf16.enabled={bf16['enabled']!r} contradicts train.precision={t.precision}")
    bf16["enabled"] = t.precision == "bf16"
    zero = ds.get("zero_optimization", {})
    offload_opt = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {"lr": cfg.optim.lr, "betas": list(cfg.optim.betas), "eps": cfg.optim.eps,
                   "weight_decay": cfg.optim.weight_decay},
    }
    # torch's AdamW needs no compilation (DeepSpeed's FusedAdam builds for minutes on first use);
    # an offloaded optimizer must be DeepSpeed's CPU Adam.
    ds["zero_allow_untested_optimizer"] = True
    if not offload_opt:
        ds["optimizer"]["params"]["torch_adam"] = True
    return ds


def repair_universal_load(engine, cfg: RunConfig) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal-checkpoint loader.

    - It copies the first parameter group's settings into every group, which puts weight decay
      on the norm weights: the run config's per-group values are put back.
    - It gives every group one shared Adam `step` tensor, which torch's AdamW increments in place
      once per group, so bias correction runs ahead: each group gets its own copy.
    Measured on a 2 -> 1 rank resume of the tiny model: without these, losses drifted from the
    uninterrupted run by 1.6e-4 at the next step and 2e-2 six steps later; with them, < 1e-6.
    """
    for group, wd in zip(engine.optimizer.param_groups, group_weight_decay(cfg.optim.weight_decay)):
        group["weight_decay"] = wd
        group["betas"] = tuple(cfg.optim.betas)
        group["eps"] = cfg.optim.eps
    inner = getattr(engine.optimizer, "optimizer", None)  # the torch optimizer over ZeRO's flat partitions
    for state in (inner.state.values() if inner is not None else ()):
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _checkpointed(layer: nn.Module, x: torch.Tensor, attn: Any) -> torch.Tensor:
    # The layer is called through __call__ in the recomputation too, so ZeRO-3's hooks gather
    # its parameters again in backward.
    return checkpoint(layer, x, attn, use_reentrant=False)


def apply_activation_checkpointing(model: LLaDAModel) -> None:
    """Recompute each block in backward; parameter names stay those of the plain model."""
    model.layer_runner = _checkpointed


def build_engine(cfg: RunConfig, model_cfg: ModelConfig, ds_config: dict):
    """(engine, model): the ZeRO-3 engine and the (wrapped) plain model inside it."""
    torch.manual_seed(cfg.train.seed)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        # Parameters are partitioned as each layer is built, so an 8B model never exists whole.
        # The dtype comes from the config (bf16.enabled, filled from train.precision), not from a
        # dtype argument: DeepSpeed 0.19.8 ignores that argument on accelerators without fp16
        # support (a precedence slip in Init._set_dtype), which on such CPUs built "fp32" models
        # in bf16.
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = LLaDAModel(model_cfg)
    else:
        model = LLaDAModel(model_cfg).to(dtype)
    lora = cfg.lora.spec()
    if lora is not None:
        # Into the plain model (its weights already ZeRO-3 shards), before DeepSpeed wraps it; the
        # new adapter parameters are partitioned by deepspeed.initialize, and only they train.
        inject_lora(model, lora, cfg.train.seed)
    wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != dtype})
    if wrong:
        raise TrainingError(f"the model was built with {', '.join(wrong)} parameters, not {dtype} as "
                            f"train.precision={cfg.train.precision} asks")
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if offload not in ("none", None) and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        print("llada-ds: the optimizer is offloaded to the CPU; DeepSpeed compiles its CPU Adam the first time it "
              "is used on a machine (about a minute)", file=sys.stderr, flush=True)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, cfg.optim.weight_decay), config=ds_config,
    )
    return engine, model


def set_learning_rate(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
