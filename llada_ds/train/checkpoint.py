"""Crash-safe checkpoints: DeepSpeed's sharded state plus our run state, published atomically.

    RUN_DIR/checkpoints/step-00000100/   DeepSpeed's files (every rank writes its shard)
                                         + run_state.json (rank 0, written after all shards)
    RUN_DIR/checkpoints/latest           the tag of the newest complete checkpoint

The `latest` file has DeepSpeed's own format (the tag as text), so DeepSpeed's tools
(zero_to_fp32, ds_to_universal) find it, but it is written by us with an atomic rename and only
after every rank finished and run_state.json exists. A crash (even kill -9) during a save leaves
`latest` on the previous checkpoint, which stays loadable; the partial directory is ignored and
removed by the next successful save.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..config import ConfigError
from ..data.storage import LocalStorage
from .distributed import DistInfo, all_reduce_sum, barrier, raise_if_any
from ..errors import CheckpointError

LATEST = "latest"
RUN_STATE = "run_state.json"
IMPORTED_WEIGHTS = "weights.safetensors"  # written by `llada-ds import`




def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    path = ckpt_root / tag
    if not (path / RUN_STATE).is_file():
        raise CheckpointError(f"{pointer} points to {tag}, which has no {RUN_STATE}: the checkpoint is incomplete")
    return path


def read_run_state(ckpt_dir: Path) -> dict:
    path = ckpt_dir / RUN_STATE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: not a complete llada-ds checkpoint (no {RUN_STATE})")
    return json.loads(path.read_text())


def check_compatible(state: dict, model_cfg: dict, tokenizer_fingerprint: str, where: Path) -> None:
    """Refuse a checkpoint of another model shape or tokenizer, naming what differs."""
    saved = state.get("model", {})
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {model_cfg.get(k)!r}"
             for k in sorted(set(saved) | set(model_cfg))
             if k != "attention" and saved.get(k) != model_cfg.get(k)]
    if diffs:
        raise CheckpointError(f"{where} holds another model shape: " + "; ".join(diffs))
    if state.get("tokenizer") != tokenizer_fingerprint:
        raise CheckpointError(f"{where} was trained with tokenizer {state.get('tokenizer')}, this run uses "
                              f"{tokenizer_fingerprint}")


def save_checkpoint(engine, ckpt_root: Path, step: int, run_state: dict, dist: DistInfo, keep_last: int,
                    delay_seconds: float = 0.0) -> Path:
    tag = tag_for(step)
    path = ckpt_root / tag
    # Rank 0 decides for everyone (another node may see the shared file system late).
    complete = all_reduce_sum([1.0 if dist.is_main and (path / RUN_STATE).is_file() else 0.0], dist.device)[0]
    if complete:
        return path  # this step is saved already (complete checkpoints are never overwritten)
    if dist.is_main and path.exists():
        shutil.rmtree(path)  # a partial directory from a crashed save of the same step
    barrier()
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state={"llada_ds": run_state}, save_latest=False)
    if delay_seconds:
        time.sleep(delay_seconds)  # fault injection: a window in which the save is incomplete
    barrier()
    error = None
    if dist.is_main:
        try:
            storage = LocalStorage(ckpt_root)
            storage.write_atomic(f"{tag}/{RUN_STATE}", (json.dumps(run_state, indent=1) + "\n").encode())
            storage.write_atomic(LATEST, tag.encode())
            _prune(ckpt_root, keep_last, keep=tag)
        except OSError as exc:  # e.g. a full disk: every rank stops with the reason, none waits
            error = f"saving {path} failed: {exc}"
    raise_if_any(error, CheckpointError, dist.device, f"rank 0 could not publish {path} (see its log)")
    return path


def _prune(ckpt_root: Path, keep_last: int, keep: str) -> None:
    complete = sorted(p for p in ckpt_root.glob("step-*") if (p / RUN_STATE).is_file())
    for old in complete[:-keep_last]:
        if old.name != keep:
            # run_state.json goes first: a deletion cut short never leaves a "complete" husk.
            (old / RUN_STATE).unlink()
            shutil.rmtree(old, ignore_errors=True)
    for partial in ckpt_root.glob("step-*"):  # left by crashed saves
        if not (partial / RUN_STATE).is_file() and partial.name != keep:
            shutil.rmtree(partial, ignore_errors=True)
    from .elastic import prune_universal

    prune_universal(ckpt_root, {p.name for p in ckpt_root.glob("step-*") if (p / RUN_STATE).is_file()})


def newer_checkpoints(ckpt_root: Path, step: int) -> list[str]:
    return sorted(p.name for p in ckpt_root.glob("step-*") if (p / RUN_STATE).is_file()
                  and read_run_state(p)["step"] > step)


def load_checkpoint(engine, ckpt_dir: Path) -> dict:
    """Everything: weights, optimizer state (same world size), and our run state."""
    path, client = engine.load_checkpoint(
        str(ckpt_dir.parent), tag=ckpt_dir.name, load_optimizer_states=True, load_lr_scheduler_states=False,
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {ckpt_dir}")
    state: Any = (client or {}).get("llada_ds")
    return state if state is not None else read_run_state(ckpt_dir)


def load_weights(engine, source: Path, dist: DistInfo) -> None:
    """Only the weights of a checkpoint (any world size) or of a Hugging Face folder in LLaDA's
    layout, into a ZeRO-3 (or plain) engine.

    Rank 0 reads the weights (for a checkpoint: the fp32 weights of exactly this tag, consolidated
    with DeepSpeed's own tool; DeepSpeed's load_module_only would take whatever `latest` names) and
    each parameter is scattered from it in turn, so no other rank ever holds the whole model.
    """
    import deepspeed

    state, error = None, None
    if dist.is_main:
        try:
            if (source / "config.json").is_file():
                from ..hf.adapter import load_llada_folder

                state = dict(load_llada_folder(source)[0].state_dict())
            else:
                state = read_checkpoint_weights(source)
            missing = [n for n, _ in engine.module.named_parameters() if n not in state]
            if missing:
                error = f"{source}: tensors missing: {', '.join(missing[:5])}"
        except (CheckpointError, ConfigError, OSError, ValueError) as exc:
            error = str(exc)
    raise_if_any(error, CheckpointError, dist.device, f"rank 0 could not read the weights of {source} (see its log)")
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if dist.is_main:
                param.data.copy_(state[name].to(param.dtype))
    barrier()


def is_universal(ckpt: Path) -> bool:
    """DeepSpeed's universal checkpoint (ds_to_universal): one folder per parameter under zero/."""
    return (ckpt / "zero").is_dir() and not list(ckpt.glob("*optim_states.pt"))


def read_checkpoint_weights(ckpt: Path) -> dict:
    """Our-named tensors of a checkpoint: DeepSpeed's ZeRO shards (consolidated in fp32 by its own
    tool), a DeepSpeed universal checkpoint (its per-parameter fp32 files), or an imported one."""
    if (ckpt / IMPORTED_WEIGHTS).is_file():
        from safetensors.torch import load_file

        return load_file(str(ckpt / IMPORTED_WEIGHTS))
    if is_universal(ckpt):
        import torch

        from ..model import ModelConfig, build_model

        shapes = {n: p.shape for n, p in build_model(ModelConfig.from_dict(read_run_state(ckpt)["model"]),
                                                      "meta").named_parameters()}
        out = {}
        for name, shape in shapes.items():
            f = ckpt / "zero" / name / "fp32.pt"
            if not f.is_file():
                raise CheckpointError(f"{ckpt}: universal checkpoint lacks {f.relative_to(ckpt)}")
            flat = torch.load(f, map_location="cpu", weights_only=True)  # DeepSpeed's own tensor files
            flat = flat["param"] if isinstance(flat, dict) else flat
            out[name] = flat.reshape(shape) if flat.numel() == shape.numel() else flat[: shape.numel()].reshape(shape)
        return out
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's tool narrates on stdout
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)


def resolve_checkpoint(path: Path) -> Path:
    """A run directory, its checkpoints/ folder, or one checkpoint -> that checkpoint."""
    for candidate in (path / "checkpoints", path):
        found = latest_checkpoint(candidate) if (candidate / LATEST).is_file() else None
        if found is not None:
            return found
    if (path / RUN_STATE).is_file():
        return path
    raise CheckpointError(f"{path}: no llada-ds checkpoint (expected a run directory or a step-* checkpoint)")


def load_plain_model(path: Path):
    """(plain LLaDAModel in fp32 with the checkpoint's weights, run state) from any world size."""

    from ..model import LLaDAModel, ModelConfig

    ckpt = resolve_checkpoint(Path(path))
    state = read_run_state(ckpt)
    model = LLaDAModel(ModelConfig.from_dict(state["model"]))
    weights = read_checkpoint_weights(ckpt)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    return model.eval(), state
