"""What a run directory holds besides its checkpoints, so that it is self-contained.

    RUN_DIR/config.yaml     the resolved run config of the latest checkpoint, paths made absolute
    RUN_DIR/tokenizer/      a copy of the run's tokenizer
    RUN_DIR/train.log       what rank 0 printed, and errors
    RUN_DIR/metrics.jsonl   one record per step and per validation

Commands that read a run (generate, eval, export, chat) then work from any directory, and after the
run directory was moved, even when the tokenizer the run was launched with is gone.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from ..config import RunConfig
from ..data.tokenizer import Tokenizer


def _absolute(path: str) -> str:
    """A local path made absolute; URIs and empty values unchanged."""
    if not path or ("://" in path and not path.startswith("file://")):
        return path
    return str(Path(path.removeprefix("file://")).expanduser().resolve())


def self_contained(cfg: RunConfig) -> RunConfig:
    """The config with its data, tokenizer and init_from paths absolute (resolved against the
    launch directory), as saved in config.yaml and in every checkpoint."""
    data = dataclasses.replace(cfg.data, train=_absolute(cfg.data.train), validation=_absolute(cfg.data.validation),
                               tokenizer=_absolute(cfg.data.tokenizer))
    train = dataclasses.replace(cfg.train, init_from=_absolute(cfg.train.init_from))
    return dataclasses.replace(cfg, data=data, train=train)


def copy_tokenizer(tokenizer: Tokenizer, dest: Path) -> None:
    """Copy the tokenizer's files into the run directory once (atomically: a partial copy never
    looks complete)."""
    if dest.is_dir():
        return
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.copy_files(tmp)
    os.replace(tmp, dest)
