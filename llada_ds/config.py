"""The run config: a YAML recipe plus dotted command-line overrides, loaded into typed dataclasses.

It owns every number of a run (batch sizes, learning rate and schedule, precision, intervals);
the DeepSpeed JSON in ds_configs/ owns only the sharding strategy and leaves those values "auto"
(see llada_ds/train/engine.py). Errors name the key and the value.

    cfg = load_run_config("tiny", ["--train.steps=100", "--optim.lr=1e-3"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError
from .model.config import ModelConfig, get_preset

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelSection:
    preset: str = "tiny"
    # Any ModelConfig field, applied on top of the preset (e.g. attention: eager, n_layers: 2).
    overrides: dict = field(default_factory=dict)

    def build(self) -> ModelConfig:
        base = get_preset(self.preset)
        return ModelConfig.from_dict({**base.to_dict(), **self.overrides})


@dataclass
class DataSection:
    train: str = ""  # shard set directory (llada-ds tokenize OUT/train)
    validation: str = ""  # optional
    tokenizer: str = ""  # tokenizer folder; its fingerprint must match the shards'
    seq_len: int = 4096
    seed: int = 0  # data order
    document_masking: bool = False
    verify: str = "full"  # full: sha256 of every shard once per job (split across ranks); header


@dataclass
class ObjectiveSection:
    # pretrain | sft | ar (the autoregressive baseline: causal mask, next token) | vrpo (preference
    # optimisation, section vrpo) | grpo (RL with verifiable rewards, section grpo)
    kind: str = "pretrain"
    eps: float = 1e-3
    random_length_prob: float = 0.01
    noise_seed: int = 0
    # vrpo, grpo: the frozen reference model's weights (a checkpoint or a Hugging Face folder);
    # default train.init_from, the model the run starts from
    reference: str = ""


@dataclass
class VRPOSection:
    """Variance-reduced preference optimisation (LLaDA 1.5): DPO on ELBO estimates."""

    beta: float = 0.1  # DPO's beta
    mc_samples: int = 8  # Monte Carlo samples per ELBO estimate, each on its own timestep with one mask
    antithetic: bool = True  # the same timesteps and masks for the policy and the reference (false: naive)


@dataclass
class GRPOSection:
    """diffu-GRPO (d1): rollouts with the sampler, group-relative advantages, clipped updates.
    Defaults: d1's published training settings."""

    reward: str = "llada_ds.rewards:exact_match"  # module:function, called (prompt, completion, example)
    generations: int = 6  # G: completions per prompt (train.global_batch counts completions)
    updates: int = 12  # mu: optimizer updates per batch of rollouts (one train step)
    clip: float = 0.5  # epsilon of the clipped ratio
    beta: float = 0.04  # KL penalty to the reference (0: no reference model)
    prompt_mask_prob: float = 0.15  # prompt tokens masked in the log-probability estimate
    loss: str = "clip"  # clip (diffu-GRPO) | wd1 (ratio-free, no reference)
    scale_rewards: bool = False  # advantages divided by the group's reward std (GRPO) or not (d1)
    sampler: str = "exact"  # exact | fast (key/value cache, grpo.cache)
    cache: str = "dual"  # prefix | dual, with sampler fast
    gen_length: int = 256
    steps: int = 128  # sampler steps
    block_length: int = 32
    temperature: float = 0.9
    remasking: str = "low_confidence"  # low_confidence | random
    log_samples: int = 4  # completions per step written to RUN_DIR/rollouts.jsonl


@dataclass
class OptimSection:
    lr: float = 4e-4
    weight_decay: float = 0.1  # applied to matrices and embeddings, not to norm weights
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables


@dataclass
class ScheduleSection:
    kind: str = "wsd"  # wsd (warmup-stable-decay) | cosine | constant
    warmup_steps: int = 2000
    # wsd: the last decay_steps decay linearly to final_lr; milestones {step: lr} lower the stable
    # level (LLaDA: 4e-4, later 1e-4, final decay to 1e-5).
    decay_steps: int = 0
    final_lr: float = 1e-5
    milestones: dict = field(default_factory=dict)


@dataclass
class TrainSection:
    steps: int = 1000
    global_batch: int = 1280  # sequences per optimizer step, over all ranks
    micro_batch: int = 4  # sequences per forward on one rank
    precision: str = "bf16"  # bf16 | fp32
    activation_checkpointing: bool = False
    seed: int = 0  # parameter initialisation
    init_from: str = ""  # a checkpoint directory to start the weights from


@dataclass
class EvalSection:
    every: int = 1000  # 0 disables
    samples: int = 256  # validation windows per evaluation


@dataclass
class CheckpointSection:
    every: int = 1000  # 0: only on exit and on SIGTERM / SIGINT
    keep_last: int = 3


@dataclass
class RecoverySection:
    max_bad_steps: int = 3  # consecutive skipped steps before reloading the last checkpoint
    lr_factor: float = 0.5  # learning-rate multiplier applied at each reload
    max_recoveries: int = 5  # reloads before the run gives up (the fault is not transient)
    spike_factor: float = 10.0  # a loss above this x its running mean is a bad step; 0 disables
    spike_warmup_steps: int = 20  # good steps before spike detection starts


@dataclass
class FaultsSection:
    """Fault injection, for testing the failure paths on purpose; leave empty in real runs."""

    nonfinite_steps: list = field(default_factory=list)  # these steps get a non-finite loss (once per process)
    save_delay_seconds: float = 0.0  # sleep inside every checkpoint save (a window to kill the job in)


@dataclass
class LogSection:
    every: int = 10
    wandb: bool = False
    wandb_project: str = "llada-ds"
    peak_tflops: Optional[float] = None  # per device; default: known GPUs, or measured on CPU


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    vrpo: VRPOSection = field(default_factory=VRPOSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    log: LogSection = field(default_factory=LogSection)
    faults: FaultsSection = field(default_factory=FaultsSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        t = self.train
        self.model.build()  # raises ConfigError naming model.* keys
        checks = [
            (t.steps > 0, "train.steps", t.steps, "must be positive"),
            (t.global_batch > 0, "train.global_batch", t.global_batch, "must be positive"),
            (t.micro_batch > 0, "train.micro_batch", t.micro_batch, "must be positive"),
            (t.precision in ("bf16", "fp32"), "train.precision", t.precision, "must be bf16 or fp32"),
            (self.data.seq_len > 0, "data.seq_len", self.data.seq_len, "must be positive"),
            (self.data.verify in ("full", "header"), "data.verify", self.data.verify, "must be full or header"),
            (self.objective.kind in ("pretrain", "sft", "ar", "vrpo", "grpo"), "objective.kind", self.objective.kind,
             "must be pretrain, sft, ar, vrpo or grpo"),
            (0 < self.objective.eps < 1, "objective.eps", self.objective.eps, "must be in (0, 1)"),
            (self.optim.lr > 0, "optim.lr", self.optim.lr, "must be positive"),
            (len(self.optim.betas) == 2, "optim.betas", self.optim.betas, "must be two numbers"),
            (self.schedule.kind in ("wsd", "cosine", "constant"), "schedule.kind", self.schedule.kind,
             "must be wsd, cosine or constant"),
            (self.schedule.warmup_steps >= 0, "schedule.warmup_steps", self.schedule.warmup_steps, "must be >= 0"),
            (self.checkpoint.keep_last >= 1, "checkpoint.keep_last", self.checkpoint.keep_last, "must be >= 1"),
            (self.recovery.max_bad_steps >= 1, "recovery.max_bad_steps", self.recovery.max_bad_steps, "must be >= 1"),
            (0 < self.recovery.lr_factor <= 1, "recovery.lr_factor", self.recovery.lr_factor, "must be in (0, 1]"),
            (self.log.every > 0, "log.every", self.log.every, "must be positive"),
            (self.eval.every >= 0, "eval.every", self.eval.every, "must be >= 0 (0 disables)"),
            (self.checkpoint.every >= 0, "checkpoint.every", self.checkpoint.every, "must be >= 0 (0: on exit only)"),
            (self.recovery.max_recoveries >= 0, "recovery.max_recoveries", self.recovery.max_recoveries, "must be >= 0"),
            (all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.faults.nonfinite_steps),
             "faults.nonfinite_steps", self.faults.nonfinite_steps, "must be step numbers"),
            (self.faults.save_delay_seconds >= 0, "faults.save_delay_seconds", self.faults.save_delay_seconds,
             "must be >= 0"),
        ]
        for ok, key, value, why in checks:
            if not ok:
                raise ConfigError(f"{key}={value!r} {why}")
        if not self.data.train:
            raise ConfigError("data.train is not set: give the shard directory (llada-ds tokenize OUT/train)")
        if not self.data.tokenizer:
            raise ConfigError("data.tokenizer is not set: give the tokenizer folder the shards were built with")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], key)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, str):
                value = value.strip()
                try:
                    return int(value)
                except ValueError:
                    value = float(value)  # "1e6" is a fine integer; "3.5" or "inf" is not
            if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            return "" if value is None else str(value)
        if hint in (list, dict) or origin in (list, dict):
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            if not isinstance(parsed, list if (hint is list or origin is list) else dict):
                raise ValueError(value)
            return parsed
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def _apply(section: Any, values: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key {name!r}; known: {', '.join(prefix + k for k in hints)}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a mapping, got {value!r}")
            _apply(current, value, name + ".")
        elif isinstance(current, dict) and isinstance(value, dict):
            current.update(value)  # --model.overrides.n_heads=4 adds to the recipe's overrides
        else:
            setattr(section, key, _coerce(value, hints[key], name))


def recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"recipe file {recipe} does not exist")
        return path
    packaged = RECIPES_DIR / f"{recipe}.yaml"
    if not packaged.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown recipe {recipe!r}; packaged recipes: {', '.join(known)} (or a .yaml path)")
    return packaged


def parse_overrides(args: list[str]) -> dict:
    """["--a.b=c", "--x.y", "3"] -> {"a": {"b": "c"}, "x": {"y": "3"}} (values stay strings)."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"override {arg!r} must look like --section.key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg!r} has no value")
            key, value = arg[2:], args[i + 1]
            i += 1
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key} conflicts with an earlier override of --{part}")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"override --{key} conflicts with an earlier override below it")
        node[parts[-1]] = value
        i += 1
    return out


def load_run_config(recipe: str, overrides: list[str] | None = None) -> RunConfig:
    path = recipe_path(recipe)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path}: not valid YAML ({exc})") from None
    cfg = RunConfig()
    _apply(cfg, values, "")
    extra = parse_overrides(overrides or [])
    # model.<field> on the command line is a ModelConfig override unless it is model.preset.
    model_extra = extra.get("model", {})
    if isinstance(model_extra, dict):
        for key in list(model_extra):
            if key not in ("preset", "overrides"):
                cfg.model.overrides[key] = _coerce_model_field(key, model_extra.pop(key))
    _apply(cfg, extra, "")
    cfg.model.overrides = {k: _coerce_model_field(k, v) for k, v in cfg.model.overrides.items()}
    cfg.validate()
    return cfg


def _coerce_model_field(key: str, value: Any) -> Any:
    hints = typing.get_type_hints(ModelConfig)
    if key not in hints:
        raise ConfigError(f"unknown model config key 'model.{key}'; known: {', '.join(hints)}")
    return _coerce(value, hints[key], f"model.{key}")
