"""What can be checked about a run before any process starts, and the entry point's arguments.

`llada-ds train` checks here before it starts torchrun, the Ray driver before any worker starts, and
every rank again at its start: the recipe and overrides (keys, types, values), the DeepSpeed config
and the batch split over the ranks, the data and tokenizer paths, the attention backend, the
optional logger, the checkpoint to resume from. Each problem is one line naming the key, value or
file (a ConfigError or CheckpointError), found in a second instead of after minutes of start-up on
every rank.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from ..config import RECIPES_DIR, RunConfig, annotated_yaml, load_run_config
from ..data.batch import DataState
from ..data.shards import INDEX_NAME
from ..data.storage import is_uri
from ..data.sft import META as SFT_META
from ..data.tokenizer import Tokenizer
from ..errors import CheckpointError, ConfigError
from ..model.attention import flash_attn_available
from ..weights import CHECKPOINTS, latest_checkpoint, read_run_state
from .engine import default_ds_config, fill_ds_config, load_ds_config


def parse_train_args(argv: list[str], prog: str = "python -m llada_ds.train") -> tuple[argparse.Namespace, list[str]]:
    """The entry point's own arguments; everything else is a config override (--section.key=value)."""
    recipes = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a LLaDA-style masked diffusion model with DeepSpeed ZeRO-3 (the one entry point of every "
                    "launcher).\nAny config key can be overridden as --section.key=value.\n"
                    f"Packaged recipes: {recipes}.",
        epilog="config keys (--section.key=value), with their defaults; `llada-ds config --recipe R [--a.b=c ...]` "
               "prints a recipe's resolved values:\n\n" + annotated_yaml())
    parser.add_argument("--recipe", required=True, help="a packaged recipe (listed above) or a .yaml file")
    parser.add_argument("--deepspeed_config", "--deepspeed-config", dest="ds_config", default=None,
                        help="DeepSpeed JSON (default: the packaged zero3.json on GPU, cpu.json on CPU)")
    parser.add_argument("--run-dir", "--run_dir", dest="run_dir", default=None,
                        help="checkpoints, logs and metrics: a directory or an object-store URI such as "
                             "s3://bucket/runs/NAME (default runs/RECIPE)")
    parser.add_argument("--resume", default="auto", help="auto (latest checkpoint if any), never, or a checkpoint dir")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="save and exit after this many steps in this process (e.g. a job time limit); "
                             "the run's numbers do not depend on it")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_known_args(argv)


def check_run(cfg: RunConfig) -> None:
    """The data, tokenizer, weights, attention backend and logger a run config names are usable."""
    d = cfg.data
    for key in ("train", "validation", "tokenizer"):
        value = getattr(d, key)
        if value and not is_uri(value) and not Path(value).exists():
            raise ConfigError(f"data.{key}={value}: no such file or directory")
    for key in ("train", "validation"):
        value = getattr(d, key)
        if not value or is_uri(value):
            continue
        if cfg.objective.kind == "sft" and not (Path(value) / SFT_META).is_file():
            raise ConfigError(f"data.{key}={value} is not an SFT cache (build one with llada-ds sft-data); "
                              "objective.kind=sft trains on conversations")
        if cfg.objective.kind != "sft" and not (Path(value) / INDEX_NAME).is_file():
            raise ConfigError(f"data.{key}={value} is not a shard set (build one with llada-ds tokenize)")
    model = cfg.model.build()
    if d.tokenizer and not is_uri(d.tokenizer):
        tok = Tokenizer.load(d.tokenizer)
        if tok.vocab_size > model.vocab_size:
            raise ConfigError(f"tokenizer {d.tokenizer} has {tok.vocab_size} tokens, more than "
                              f"model.vocab_size={model.vocab_size}")
    if cfg.train.init_from and not is_uri(cfg.train.init_from) and not Path(cfg.train.init_from).exists():
        raise ConfigError(f"train.init_from={cfg.train.init_from}: no such file or directory")
    if model.attention == "flash" and not (torch.cuda.is_available() and flash_attn_available()):
        raise ConfigError("model.attention=flash needs the flash-attn package on a CUDA machine "
                          "(pip install 'llada-ds[gpu]'); use auto (flash where it can run, else sdpa) or sdpa")
    if cfg.log.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("log.wandb=true needs wandb: pip install 'llada-ds[wandb]'")


def check_resume(resume: str, run_dir: Path, cfg: RunConfig) -> None:
    """The checkpoint a run would continue from exists and was trained with the same global batch."""
    if resume not in ("auto", "never") and not is_uri(resume) and not Path(resume).exists():
        raise CheckpointError(f"--resume {resume}: no such checkpoint (it does not exist)")
    if resume == "never" or is_uri(str(run_dir)):
        return
    ckpt = Path(resume) if resume != "auto" else latest_checkpoint(run_dir / CHECKPOINTS)
    if ckpt is None:
        return
    saved = read_run_state(ckpt)
    DataState.from_dict(saved["data"]).check_batch(cfg.train.global_batch, saved.get("step"))


def preflight(argv: list[str], world: int) -> tuple[argparse.Namespace, RunConfig, dict]:
    """Parse and check a run for `world` ranks: (arguments, run config, DeepSpeed config)."""
    args, overrides = parse_train_args(argv)
    cfg = load_run_config(args.recipe, overrides)
    ds_config = load_ds_config(args.ds_config or default_ds_config())
    fill_ds_config(ds_config, cfg, world)  # refuses a batch that cannot be split over `world` ranks
    if args.stop_after is not None and args.stop_after < 0:
        raise ConfigError(f"--stop-after {args.stop_after}: expected a step count >= 0 (0 saves the starting "
                          "point and exits)")
    check_run(cfg)
    check_resume(args.resume, run_dir_of(args), cfg)
    return args, cfg, ds_config


def run_dir_of(args: argparse.Namespace) -> str | Path:
    """The run directory: a local path, or an object-store URI kept as text."""
    run_dir = args.run_dir or f"runs/{Path(args.recipe).stem}"
    return run_dir if is_uri(run_dir) else Path(run_dir)
