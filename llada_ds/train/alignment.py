"""The alignment objectives of a run (objective.kind vrpo | grpo): their reference model, reward,
sampler settings and validation, built from the run config once the policy's engine exists.

The reference is the model the run starts from, frozen. For full fine-tuning it is a second copy
of those weights, built like the policy (under ZeRO-3 partitioned by `zero.Init`, so it never
exists whole on a rank) and wrapped by DeepSpeed without an optimizer, which installs ZeRO-3's
parameter gathering for its forwards; rank 0 reads the weights and scatters them parameter by
parameter (checkpoint.py: scatter_weights), as train.init_from does for the policy. A run resumed
from a checkpoint rebuilds it from the same weights. With LoRA the reference is the policy with
its adapters switched off (diffusion/reference.py: AdaptersDisabled, through lora.py's
adapters_disabled) and needs no copy, unless objective.reference names other weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import deepspeed
import torch

from ..config import RunConfig
from ..data.tokenizer import Tokenizer
from ..diffusion.fast_sampler import FastConfig
from ..diffusion.grpo import GRPOObjective, GRPOSettings
from ..diffusion.masking import NoiseConfig
from ..diffusion.preference import VRPOObjective
from ..diffusion.reference import AdaptersDisabled, FrozenReference, Reference
from ..diffusion.sampler import SamplerConfig
from ..errors import ConfigError, TrainingError
from ..evaluation import Evaluator, validation_noise
from ..lora import adapters_disabled
from ..model import LLaDAModel, ModelConfig
from ..rewards import load_reward
from ..weights import check_compatible, find_weights
from .checkpoint import scatter_weights
from .distributed import DistInfo, all_reduce_

ALIGNMENT = ("vrpo", "grpo")


def reference_ds_config(ds_config: dict) -> dict:
    """The policy's DeepSpeed config without an optimizer: the same ZeRO stage and precision."""
    ds = json.loads(json.dumps(ds_config))
    for key in ("optimizer", "zero_allow_untested_optimizer"):
        ds.pop(key, None)
    ds.get("zero_optimization", {}).pop("offload_optimizer", None)
    return ds


def build_reference(cfg: RunConfig, model_cfg: ModelConfig, ds_config: dict, dist: DistInfo,
                    tokenizer: Tokenizer) -> FrozenReference:
    """A frozen copy of objective.reference (default train.init_from), sharded like the policy."""
    path = cfg.objective.reference or cfg.train.init_from
    if not path:
        raise ConfigError(f"objective.kind={cfg.objective.kind} needs a reference model: set train.init_from (the "
                          "model to start from, e.g. the SFT run) or objective.reference")
    source = find_weights(Path(path))
    check_compatible(source.description, model_cfg.to_dict(), tokenizer.fingerprint, source.path)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    ds = reference_ds_config(ds_config)
    if ds.get("zero_optimization", {}).get("stage", 0) == 3:
        with deepspeed.zero.Init(config_dict_or_path=ds):
            model = LLaDAModel(model_cfg)
    else:
        model = LLaDAModel(model_cfg).to(dtype)
    if any(p.dtype != dtype for p in model.parameters()):
        raise TrainingError(f"the reference model was not built in {dtype} (train.precision={cfg.train.precision})")
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds)
    scatter_weights(engine, source, dist)
    return FrozenReference(engine)


def make_alignment(cfg: RunConfig, tokenizer: Tokenizer, engine, ds_config: dict, dist: DistInfo, validation,
                   reference: Optional[Reference] = None) -> tuple[object, Optional[Evaluator]]:
    """(objective, evaluator or None) of a vrpo or grpo run. The reference: `reference` if given;
    with LoRA (and no objective.reference) the policy with its adapters disabled; otherwise a
    frozen copy, built only when the objective needs one."""
    o, model_cfg = cfg.objective, cfg.model.build()
    if reference is None and cfg.lora.spec() is not None and not o.reference:
        reference = AdaptersDisabled(engine, adapters_disabled)  # the frozen base is train.init_from
    noise = NoiseConfig(o.noise_seed, o.eps, o.random_length_prob)
    mask_id, vocab = tokenizer.special.mask, model_cfg.vocab_size
    if o.kind == "vrpo":
        v = cfg.vrpo
        reference = reference or build_reference(cfg, model_cfg, ds_config, dist, tokenizer)
        objective = VRPOObjective(mask_id, vocab, noise, reference, v.beta, v.mc_samples, v.antithetic)
        evaluator = None if validation is None else Evaluator(
            VRPOObjective(mask_id, vocab, validation_noise(o.noise_seed, o.eps), reference, v.beta, v.mc_samples,
                          v.antithetic), validation, dist.device, all_reduce_)
        return objective, evaluator
    if o.kind != "grpo":
        raise ConfigError(f"objective.kind={o.kind!r} is not one of {', '.join(ALIGNMENT)}")
    g = cfg.grpo
    settings = GRPOSettings(g.generations, g.updates, g.clip, g.beta, g.prompt_mask_prob, g.loss, g.scale_rewards,
                            g.log_samples)
    if g.sampler not in ("exact", "fast"):
        raise ConfigError(f"grpo.sampler={g.sampler!r} must be exact or fast")
    sampler = SamplerConfig(gen_length=g.gen_length, steps=g.steps, block_length=g.block_length,
                            temperature=g.temperature, remasking=g.remasking)
    # Confidence-threshold decoding is left out: it runs a data-dependent number of forwards, and
    # under ZeRO-3 every rank must run the same number (each forward gathers the shards).
    fast = FastConfig(g.cache) if g.sampler == "fast" else None
    if settings.needs_reference and reference is None:
        reference = build_reference(cfg, model_cfg, ds_config, dist, tokenizer)
    objective = GRPOObjective(mask_id, vocab, noise, tokenizer, load_reward(g.reward), settings, sampler,
                              cfg.train.micro_batch, reference, fast)
    return objective, None  # a GRPO run is judged by its rewards (metrics.jsonl) and llada-ds eval
