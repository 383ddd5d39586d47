"""The run config: a YAML recipe plus dotted command-line overrides, loaded into typed dataclasses.

It owns every number of a run (batch sizes, learning rate and schedule, precision, intervals);
the DeepSpeed JSON in ds_configs/ owns only the sharding strategy and leaves those values "auto"
(see llada_ds/train/engine.py). Errors name the key and the value.

    cfg = load_run_config("tiny", ["--train.steps=100", "--optim.lr=1e-3"])
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError
from .lora import ALL_LINEAR, LoraSpec, lora_spec
from .model.config import ModelConfig, get_preset

RECIPES_DIR = Path(__file__).parent / "recipes"


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (shown by `llada-ds train --help` and `llada-ds config`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelSection:
    preset: str = setting("tiny", "model shape: tiny, llada-1b or llada-8b")
    overrides: dict = setting({}, "any model config field on top of the preset, e.g. {n_layers: 2, attention: eager}; "
                                  "on the command line also --model.FIELD=VALUE")

    def build(self) -> ModelConfig:
        base = get_preset(self.preset)
        return ModelConfig.from_dict({**base.to_dict(), **self.overrides})


@dataclass
class DataSection:
    train: str = setting("", "training data: a shard set (llada-ds tokenize OUT/train) or an SFT cache "
                             "(llada-ds sft-data OUT/train); a directory or an object-store URI (s3://, gs://)")
    validation: str = setting("", "validation data of the same kind (optional)")
    tokenizer: str = setting("", "tokenizer folder (or URI); its fingerprint must match the data's")
    seq_len: int = setting(4096, "tokens per training sequence (SFT: the longest pair)")
    seed: int = setting(0, "data order")
    document_masking: bool = setting(False, "attention stays within each packed document (off in LLaDA)")
    verify: str = setting("auto", "full: sha256 of every shard once per job, split across ranks; header: sizes and "
                                  "headers only; auto: full on a file system, header in object storage (hashing "
                                  "there downloads everything)")
    prefetch_steps: int = setting(4, "shards in object storage: steps read ahead in the background")
    cache_mb: int = setting(256, "shards in object storage: in-memory cache of small ranges (validation windows)")


@dataclass
class ObjectiveSection:
    kind: str = setting("pretrain", "pretrain | sft | ar (the autoregressive baseline: causal, next token)")
    eps: float = setting(1e-3, "minimum masking probability: p = (1 - eps) t + eps")
    random_length_prob: float = setting(0.01, "share of pre-training steps cut to a random length")
    noise_seed: int = setting(0, "seed of the diffusion noise (counter-based: keyed by step and sample)")


@dataclass
class OptimSection:
    lr: float = setting(4e-4, "peak learning rate (AdamW)")
    weight_decay: float = setting(0.1, "applied to matrices and embeddings, not to norm weights")
    betas: list = setting([0.9, 0.95], "AdamW betas")
    eps: float = setting(1e-8, "AdamW epsilon")
    grad_clip: float = setting(1.0, "gradient norm clipping; 0 disables")


@dataclass
class ScheduleSection:
    kind: str = setting("wsd", "wsd (warmup-stable-decay) | cosine | constant")
    warmup_steps: int = setting(2000, "linear warmup steps")
    decay_steps: int = setting(0, "wsd: the last decay_steps decay linearly to final_lr")
    final_lr: float = setting(1e-5, "learning rate at the end (wsd, cosine)")
    milestones: dict = setting({}, "wsd: {step: lr} lowering the stable level (LLaDA: 4e-4, later 1e-4)")


@dataclass
class TrainSection:
    steps: int = setting(1000, "optimizer steps of the whole run")
    global_batch: int = setting(1280, "sequences per optimizer step, over all ranks (fixed for the whole run)")
    micro_batch: int = setting(4, "sequences per forward on one rank")
    precision: str = setting("bf16", "bf16 | fp32")
    activation_checkpointing: bool = setting(False, "recompute each block in backward (less memory, ~1/3 more "
                                                    "compute)")
    seed: int = setting(0, "parameter initialisation")
    init_from: str = setting("", "start from the weights of a checkpoint, run directory or Hugging Face folder")


@dataclass
class LoraSection:
    """LoRA adapters (llada_ds/lora.py): the base weights (train.init_from) stay frozen and only the
    adapters train, for any objective. rank 0 is full fine-tuning."""

    rank: int = setting(0, "0: full fine-tuning; r > 0: LoRA adapters of rank r (needs train.init_from, the base)")
    alpha: float = setting(16.0, "the adapters' output is scaled by alpha / rank")
    # Its masks come from torch's generator, not from the keyed noise: with dropout > 0 a run
    # resumed, or on another number of ranks, no longer repeats exactly.
    dropout: float = setting(0.0, "dropout on the adapters' input (> 0: resumes are no longer exact)")
    targets: list = setting([ALL_LINEAR], "matrices to adapt, in LLaDA's released names (q_proj k_proj v_proj "
                                          "attn_out ff_proj up_proj ff_out), or all-linear")

    def spec(self) -> Optional[LoraSpec]:
        """The checked settings, None when LoRA is off (errors name the lora.* key)."""
        if self.rank == 0:
            return None
        return lora_spec(self.rank, self.alpha, self.dropout, self.targets)


@dataclass
class EvalSection:
    every: int = setting(1000, "validation every N steps (and before the first and after the last); 0 disables")
    samples: int = setting(256, "validation sequences per evaluation")


@dataclass
class CheckpointSection:
    every: int = setting(1000, "save every N steps; 0: only at the end and on a stop signal")
    keep_last: int = setting(3, "complete checkpoints kept")
    local_dir: str = setting("", "run directories in object storage: fast local disk where each rank writes its "
                                 "files before uploading them in the background (default: the system's temp dir)")


@dataclass
class RecoverySection:
    max_bad_steps: int = setting(3, "bad steps in a row before reloading the last checkpoint")
    lr_factor: float = setting(0.5, "learning-rate multiplier applied at each reload")
    max_recoveries: int = setting(5, "reloads before the run gives up (the fault is not transient)")
    spike_factor: float = setting(10.0, "a loss above this x its running mean is a bad step; 0 disables")
    spike_warmup_steps: int = setting(20, "good steps before spike detection starts")


@dataclass
class FaultsSection:
    """Fault injection, for testing the failure paths on purpose; leave empty in real runs."""

    nonfinite_steps: list = setting([], "these steps (counted from 1) get a non-finite loss, once per process")
    save_delay_seconds: float = setting(0.0, "sleep inside every checkpoint save (a window to kill the job in)")
    upload_delay_seconds: float = setting(0.0, "object storage: sleep before each uploaded checkpoint file")


@dataclass
class LogSection:
    every: int = setting(10, "one log line every N steps")
    wandb: bool = setting(False, "log to Weights & Biases (offline unless you are logged in or set WANDB_MODE)")
    wandb_project: str = setting("llada-ds", "wandb project")
    wandb_entity: str = setting("", "wandb entity (team or user); default: your wandb default")
    wandb_name: str = setting("", "wandb run name; default: the run directory's name")
    wandb_tags: list = setting([], "wandb tags")
    peak_tflops: Optional[float] = setting(None, "per-device peak for MFU; default: known GPUs, or measured on CPU")


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    lora: LoraSection = field(default_factory=LoraSection)
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
            (self.data.verify in ("full", "header", "auto"), "data.verify", self.data.verify,
             "must be full, header or auto"),
            (self.data.prefetch_steps >= 0, "data.prefetch_steps", self.data.prefetch_steps, "must be >= 0"),
            (self.data.cache_mb >= 0, "data.cache_mb", self.data.cache_mb, "must be >= 0"),
            (self.objective.kind in ("pretrain", "sft", "ar"), "objective.kind", self.objective.kind,
             "must be pretrain, sft or ar"),
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
            (self.faults.upload_delay_seconds >= 0, "faults.upload_delay_seconds",
             self.faults.upload_delay_seconds, "must be >= 0"),
        ]
        for ok, key, value, why in checks:
            if not ok:
                raise ConfigError(f"{key}={value!r} {why}")
        if self.lora.rank < 0:
            raise ConfigError(f"lora.rank={self.lora.rank!r} must be >= 0 (0 turns LoRA off)")
        if self.lora.spec() is not None and not t.init_from:
            raise ConfigError("lora.rank > 0 trains adapters on frozen base weights: set train.init_from to the base "
                              "(a run, a checkpoint or a Hugging Face folder in LLaDA's layout)")
        if not self.data.train:
            raise ConfigError("data.train is not set: give the shard directory (llada-ds tokenize OUT/train)")
        if not self.data.tokenizer:
            raise ConfigError("data.tokenizer is not set: give the tokenizer folder the shards were built with")


def annotated_yaml(cfg: Optional[RunConfig] = None) -> str:
    """The config as YAML, every key followed by its help as a comment (defaults when cfg is None).

    `llada-ds config --recipe R [--a.b=c ...]` prints it for a resolved recipe; it is also a valid
    recipe file.
    """
    cfg = cfg or RunConfig()
    lines = []
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(value):
            dumped = yaml.safe_dump({f.name: getattr(value, f.name)}, default_flow_style=True, width=10_000).strip()
            dumped = dumped[1:-1] if dumped.startswith("{") else dumped  # {key: value} -> key: value
            help_text = f.metadata.get("help", "")
            lines.append(f"  {dumped:<38}" + (f"  # {help_text}" if help_text else ""))
    return "\n".join(lines) + "\n"


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
            if (hint is list or origin is list) and isinstance(parsed, str):
                parsed = [parsed]  # --lora.targets=all-linear: one name is a list of one
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
