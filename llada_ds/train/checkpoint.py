"""Crash-safe checkpoints of a training run, and everything about continuing from one.

    RUN_DIR/checkpoints/step-00000100/   DeepSpeed's files (every rank writes its shard)
                                         + run_state.json (rank 0, written after all shards)
    RUN_DIR/checkpoints/latest           the tag of the newest complete checkpoint

The `latest` file has DeepSpeed's own format (the tag as text), so DeepSpeed's tools
(zero_to_fp32, ds_to_universal) find it, but it is written by us with an atomic rename and only
after every rank finished and run_state.json exists. A crash (even kill -9) during a save leaves
`latest` on the previous checkpoint, which stays loadable; the partial directory is ignored and
removed by the next successful save.

`Checkpointer` owns the decisions around a run's checkpoints: which one a run continues from
(--resume auto | never | PATH), loading it at any world size (through DeepSpeed's universal form
when the world size changed, see elastic.py), initial weights (train.init_from), reloads for
recovery, and saving.

LoRA runs (lora.rank > 0): a checkpoint holds the adapters and their optimizer state only
(DeepSpeed's exclude_frozen_parameters: the frozen base is in neither the model nor the optimizer
files), and run_state.json records the LoRA settings and the base, `{"path", "kind",
"fingerprint"}`, the fingerprint being that of the base's tensors (weights.weights_fingerprint).
The base is scattered from train.init_from before a checkpoint's adapters are loaded; on a resume
it must have the recorded fingerprint. Recovery reloads only the adapters and their optimizer
state: the frozen base never changes in memory.

A run directory in object storage is the same layout in a bucket, saved
and read through remote_run.py (background uploads, local copies for loading).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import deepspeed

from ..data.storage import LocalStorage
from ..errors import CheckpointError, ConfigError, LladaError
from ..lora import LoraSpec, base_name, is_adapter_name
from ..weights import (
    CHECKPOINTS, LATEST, RUN_STATE, WeightsSource, check_compatible, find_weights, latest_checkpoint, read_run_state,
    read_weights, tag_for, weights_fingerprint,
)
from .distributed import DistInfo, all_reduce_sum, barrier, from_main, raise_if_any
from .elastic import convert_to_universal, is_converted, prune_universal, universal_path
from .remote_run import RemoteRun


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
    # Frozen parameters (a LoRA run's base) are written neither to the model files nor, as they are
    # not in the optimizer, to the optimizer files: a LoRA checkpoint holds its adapters only.
    engine.save_checkpoint(str(ckpt_root), tag=tag, save_latest=False, exclude_frozen_parameters=True)
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
    prune_universal(ckpt_root, {p.name for p in ckpt_root.glob("step-*") if (p / RUN_STATE).is_file()})


def newer_checkpoints(ckpt_root: Path, step: int) -> list[str]:
    return sorted(p.name for p in ckpt_root.glob("step-*") if (p / RUN_STATE).is_file()
                  and read_run_state(p)["step"] > step)


def scatter_weights(engine, source: WeightsSource, dist: DistInfo, expect_fingerprint: Optional[str] = None,
                    fingerprint: bool = False) -> Optional[str]:
    """Only the weights of a source (a checkpoint of any world size, or a Hugging Face folder in
    LLaDA's layout) into a ZeRO-3 (or plain) engine; with LoRA adapters, into the base weights
    (the adapters keep their initial values).

    Rank 0 reads the weights (for a checkpoint: the fp32 weights of exactly that tag, consolidated
    with DeepSpeed's own tool; DeepSpeed's load_module_only would take whatever `latest` names) and
    each parameter is scattered from it in turn, so no other rank ever holds the whole model.
    fingerprint: also return the fingerprint of the weights read (every rank gets rank 0's);
    expect_fingerprint: refuse weights with another one.
    """
    targets = [(name, base_name(name), p) for name, p in engine.module.named_parameters() if not is_adapter_name(name)]
    state, error, got = None, None, None
    if dist.is_main:
        try:
            state = read_weights(source)
            missing = [ours for _, ours, _ in targets if ours not in state]
            if missing:
                error = f"{source.path}: tensors missing: {', '.join(missing[:5])}"
            elif fingerprint or expect_fingerprint:
                got = weights_fingerprint(state)
                if expect_fingerprint and got != expect_fingerprint:
                    error = (f"{source.path}: these base weights (fingerprint {got}) are not the ones the checkpoint's "
                             f"LoRA adapters were trained on ({expect_fingerprint})")
        except (CheckpointError, ConfigError, OSError) as exc:
            error = str(exc)
    raise_if_any(error, CheckpointError, dist.device, f"rank 0 could not read the weights of {source.path} (see its log)")
    for _, ours, param in targets:
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if dist.is_main:
                param.data.copy_(state[ours].to(param.dtype))
    barrier()
    return from_main(got)


class Checkpointer:
    """A run's checkpoints: pick, load (any world size), initial weights, save."""

    def __init__(self, engine, run_dir: Path, dist: DistInfo, model_cfg: dict, tokenizer_fingerprint: str,
                 keep_last: int, save_delay_seconds: float = 0.0, lora: Optional[LoraSpec] = None,
                 remote: Optional[RemoteRun] = None) -> None:
        """remote: the run directory is in object storage (run_dir is then its local mirror)."""
        self.engine, self.dist, self.remote = engine, dist, remote
        self.root = run_dir / CHECKPOINTS
        self.model_cfg, self.tokenizer_fingerprint = model_cfg, tokenizer_fingerprint
        self.keep_last, self.save_delay_seconds = keep_last, save_delay_seconds
        self.lora = lora
        self.base: Optional[dict] = None  # LoRA: the frozen base {path, kind, fingerprint}, once loaded

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, as rank 0 sees it (every rank acts on one decision).
        In object storage: after the upload in flight is published, downloaded to local disk."""
        if self.remote is None:
            return from_main(latest_checkpoint(self.root))
        self.remote.flush()
        tag, error = None, None
        if self.dist.is_main:
            try:
                tag = self.remote.latest_tag()
            except LladaError as exc:
                error = str(exc)
        raise_if_any(error, CheckpointError, self.dist.device, "rank 0 could not read the latest checkpoint")
        tag = from_main(tag)
        return None if tag is None else self.remote.fetch(tag)

    def pick(self, resume: str) -> Optional[Path]:
        """The checkpoint this run continues from (None: a fresh start), checked against the run."""
        if self.remote is not None and resume not in ("never", "auto"):
            # a checkpoint of this run in the bucket: URI/checkpoints/step-N (or the tag alone)
            tag = resume.rstrip("/").rsplit("/", 1)[-1]
            if resume.rstrip("/") not in (tag, self.remote.describe(tag)):
                raise CheckpointError(f"--resume {resume}: a run in object storage resumes from its own "
                                      f"checkpoints ({self.remote.describe('step-N')}) or auto / never")
            newer = [t for t in self.remote.complete_tags() if t > tag]
            if newer:
                raise CheckpointError(f"{self.remote.describe()} holds checkpoints newer than {tag} "
                                      f"({', '.join(newer)}); resuming from an older one here would mix two histories")
            ckpt = self.remote.fetch(tag)
            check_compatible(read_run_state(ckpt), self.model_cfg, self.tokenizer_fingerprint, ckpt)
            return ckpt
        if resume == "never":
            found = self.remote.latest_tag() if self.remote else latest_checkpoint(self.root)
            if found is not None:
                where = self.remote.uri if self.remote else self.root.parent
                raise CheckpointError(f"{where} already holds checkpoints; use --resume auto or another run dir")
            return None
        ckpt = self.latest() if resume == "auto" else Path(resume)
        if ckpt is None:
            return None
        state = read_run_state(ckpt)
        check_compatible(state, self.model_cfg, self.tokenizer_fingerprint, ckpt)
        self._check_lora(state, ckpt)
        if resume != "auto" and ckpt.parent.resolve() == self.root.resolve():
            newer = newer_checkpoints(self.root, state["step"])
            if newer:
                raise CheckpointError(
                    f"{self.root} holds checkpoints newer than {ckpt.name} ({', '.join(newer)}); resuming "
                    "from an older one here would mix two histories: use another --run-dir or remove them")
        return ckpt

    def load(self, ckpt: Path) -> tuple[dict, Optional[Path]]:
        """Load a complete checkpoint (weights, optimizer, run state) written by any world size:
        (its run state, the universal copy it was loaded through if the world size differed)."""
        universal = is_converted(ckpt) or read_run_state(ckpt).get("world_size", self.dist.world) != self.dist.world
        via = (ckpt if is_converted(ckpt) else self._universal(ckpt)) if universal else None
        # DeepSpeed consults this switch only while loading: on for this load alone, so a later
        # load (recovery) of a checkpoint written at this world size takes the ordinary path.
        self.engine._config.load_universal_checkpoint = universal
        try:
            # A LoRA checkpoint lacks the frozen base, which load_base put in place beforehand.
            path, _ = self.engine.load_checkpoint(str((via or ckpt).parent), tag=(via or ckpt).name,
                                                  load_optimizer_states=True, load_lr_scheduler_states=False,
                                                  load_module_strict=self.lora is None)
        finally:
            self.engine._config.load_universal_checkpoint = False
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {via or ckpt}")
        return read_run_state(via or ckpt), via

    def _universal(self, ckpt: Path) -> Path:
        """The universal form of `ckpt` (written by another world size), converted once by rank 0."""
        if self.remote is not None:
            return self.remote.universal(ckpt.name)
        error: Optional[str] = None
        if self.dist.is_main:
            try:
                convert_to_universal(ckpt)
            except (CheckpointError, OSError) as exc:
                error = str(exc)
        raise_if_any(error, CheckpointError, self.dist.device,
                     f"rank 0 could not convert {ckpt} to a universal checkpoint (see its log)")
        return universal_path(ckpt)

    def init_weights(self, init_from: str) -> Path:
        """Start from the weights (only) of a checkpoint or a Hugging Face folder in LLaDA's layout."""
        # Rank 0 resolves it (and downloads it, for a URI); the others only need what it is.
        source, error = None, None
        if self.dist.is_main:
            try:
                source = find_weights(init_from)
            except (CheckpointError, ConfigError, OSError) as exc:
                error = str(exc)
        raise_if_any(error, CheckpointError, self.dist.device, f"rank 0 could not find weights in {init_from}")
        source = from_main(source)
        check_compatible(source.description, self.model_cfg, self.tokenizer_fingerprint, source.path)
        scatter_weights(self.engine, source, self.dist)
        return source.path

    def _check_lora(self, state: dict, ckpt: Path) -> None:
        """A checkpoint continues only a run with the same LoRA settings (or none on both sides)."""
        saved = state.get("lora")
        ours = None if self.lora is None else self.lora.to_dict()
        theirs = None if saved is None else {k: saved[k] for k in ("rank", "alpha", "dropout", "targets")}
        if theirs != ours:
            raise CheckpointError(f"{ckpt} was written with LoRA {theirs or 'off (full training)'}, this run has "
                                  f"LoRA {ours or 'off (lora.rank=0)'}: use the same lora.* settings or another "
                                  "run dir")

    def load_base(self, init_from: str, ckpt: Optional[Path]) -> str:
        """LoRA runs: scatter the frozen base from train.init_from (before a checkpoint's adapters
        are loaded); resuming, it must be the base the checkpoint records. A note for the log."""
        if self.lora is None:
            return ""
        source = find_weights(Path(init_from))
        check_compatible(source.description, self.model_cfg, self.tokenizer_fingerprint, source.path)
        expected = None if ckpt is None else read_run_state(ckpt)["lora"]["base"]["fingerprint"]
        fingerprint = scatter_weights(self.engine, source, self.dist, expect_fingerprint=expected, fingerprint=True)
        self.base = {"path": str(source.path.resolve()), "kind": source.kind, "fingerprint": fingerprint}
        return (f"LoRA rank {self.lora.rank} on {', '.join(self.lora.targets)}; frozen base {source.path} "
                f"({fingerprint})")

    def save(self, step: int, run_state: dict) -> Path:
        if self.lora is not None:
            run_state = {**run_state, "lora": {**self.lora.to_dict(), "base": self.base}}
        if self.remote is not None:  # written locally; uploaded and published in the background
            return self.remote.save(self.engine, step, run_state, self.keep_last, self.save_delay_seconds)
        return save_checkpoint(self.engine, self.root, step, run_state, self.dist, self.keep_last,
                               self.save_delay_seconds)

    def flush(self) -> None:
        """Wait until the last save is stored and published (object storage; every rank calls it)."""
        if self.remote is not None:
            self.remote.flush()
