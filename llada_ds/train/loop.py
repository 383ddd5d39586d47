"""The one training loop, whatever started the processes (deepspeed, torchrun, llada-ds, Ray).

One optimizer step (`Trainer.train_step`), on every rank:
    lr = schedule(step) x the recovery scale
    for each micro-batch of this rank's share of global batch `step`:
        loss, figures = objective.loss(engine, micro-batch, step)   noise keyed by (seed, step, sample)
        engine.backward(loss); engine.step()                         DeepSpeed accumulates, clips, steps
    before the last backward, one all-reduce gives every rank the step's figures and any stop request,
    and the bad-step guard decides on the device whether the update may be applied (recovery.py);
    after the update, one copy brings the step's figures and gradient norm to the host.

The pieces around it: train/datasets.py (what the batches are), diffusion/objectives.py (what is
trained; an objective with a `prepare` hook, GRPO, makes one step several updates on rollouts),
train/alignment.py (the reference model and settings of VRPO and GRPO), train/checkpoint.py (pick,
load at any world size, save), train/recovery.py (bad steps),
train/monitor.py (logs, metrics.jsonl, wandb), evaluation.py (validation loss). Everything that
decides the run's numbers (data order, noise, schedule) is a function of the step and global
counters, so a resumed run (any world size) computes what an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import yaml

from ..config import RunConfig
from ..data.batch import DataState
from ..data.tokenizer import Tokenizer
from ..diffusion import NoiseConfig, StepStats, make_objective
from ..errors import CheckpointError, ConfigError, DataError, TrainingError
from ..evaluation import Evaluator, validation_noise
from ..lora import lora_parameter_count, lora_train_flops_per_token
from ..model.sizing import count, train_flops_per_token
from ..weights import RUN_TOKENIZER
from .alignment import ALIGNMENT, make_alignment
from .checkpoint import Checkpointer
from .run_dir import copy_tokenizer, self_contained
from .datasets import open_run_data
from .distributed import DistInfo, all_reduce_, raise_if_any
from .engine import build_engine, fill_ds_config, repair_universal_load, set_learning_rate
from .faults import Faults
from .monitor import Monitor, peak_tflops
from .recovery import BadStepGuard
from .remote_run import open_run_dir
from .schedule import learning_rate
from .signals import StopRequest
from .state import RunState, StepResult


class Trainer:
    def __init__(self, cfg: RunConfig, ds_config: dict, run_dir: str | Path, resume: str, dist: DistInfo,
                 on_log: Optional[Callable[[dict], None]] = None, stop: Optional[StopRequest] = None) -> None:
        """run_dir: a directory or an object-store URI; on_log: called on every rank at each log
        interval with that interval's figures; stop: the stop request whose signal handlers the entry
        point installed (default: installed when the loop starts)."""
        cfg = self_contained(cfg)
        # A URI is written through a local mirror (logs) and background uploads (checkpoints).
        run_dir, self.remote = open_run_dir(run_dir, cfg.checkpoint.local_dir, dist, cfg.faults.upload_delay_seconds)
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.model_cfg = cfg.model.build()
        self.tokenizer = Tokenizer.load(cfg.data.tokenizer)
        if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
            raise ConfigError(f"tokenizer {cfg.data.tokenizer} has {self.tokenizer.vocab_size} tokens, more than "
                              f"model.vocab_size={self.model_cfg.vocab_size}")
        self.data = open_run_data(cfg, self.tokenizer, dist)
        o, mask_id, vocab = cfg.objective, self.tokenizer.special.mask, self.model_cfg.vocab_size
        if o.kind not in ALIGNMENT:
            self.objective = make_objective(o.kind, mask_id, vocab, NoiseConfig(o.noise_seed, o.eps, o.random_length_prob))
            self.evaluator = None if self.data.validation is None else Evaluator(
                make_objective(o.kind, mask_id, vocab, validation_noise(o.noise_seed, o.eps)), self.data.validation,
                dist.device, all_reduce_)
        ds_config = fill_ds_config(ds_config, cfg, dist.world)
        self.engine, _ = build_engine(cfg, self.model_cfg, ds_config)
        if o.kind in ALIGNMENT:  # they need the engine: a reference model like it, rollouts with it
            self.objective, self.evaluator = make_alignment(cfg, self.tokenizer, self.engine, ds_config, dist,
                                                            self.data.validation)
        self.checkpoints = Checkpointer(self.engine, run_dir, dist, self.model_cfg.to_dict(),
                                        self.tokenizer.fingerprint, cfg.checkpoint.keep_last,
                                        cfg.faults.save_delay_seconds, lora=cfg.lora.spec(), remote=self.remote)
        self.state = RunState()
        self.guard = BadStepGuard(cfg.recovery)
        self.faults = Faults(cfg.faults)
        self.stop = stop or StopRequest()
        note = self._start(resume)
        self.monitor = self._monitor(on_log)
        self.state.wandb_id = self.monitor.wandb_id or self.state.wandb_id
        self.monitor.print(self._banner() + (f"; {note}" if note else ""))

    # -- one optimizer step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> StepResult:
        lr = learning_rate(step, self.cfg.train.steps, self.cfg.optim.lr, self.cfg.schedule) * self.state.lr_scale
        set_learning_rate(self.engine, lr)
        micro_batches = self.data.step(step, self.dist)
        poison = self.faults.nonfinite(step + 1)
        prepare = getattr(self.objective, "prepare", None)
        if prepare is None:
            return self._update(step, lr, micro_batches, poison)
        # The objective turns the step's data into several updates (GRPO: rollouts on the current
        # weights, then mu updates on them); the step reports them together.
        prepared = prepare(self.engine, micro_batches, step)
        raise_if_any(prepared.error, DataError, self.dist.device, f"step {step}: another rank could not prepare its "
                     "batch (see its log)")
        self.monitor.samples(prepared.samples)
        return StepResult.combine([self._update(step, lr, update, poison, prepared.figures if k == 0 else None)
                                   for k, update in enumerate(prepared.updates)])

    def _update(self, step: int, lr: float, micro_batches: list, poison: bool,
                figures: Optional[StepStats] = None) -> StepResult:
        """One optimizer update on this rank's micro-batches (figures: more to report with it)."""
        stats, n = figures or StepStats.zeros(self.dist.device), len(micro_batches) * self.dist.world
        for i, mb in enumerate(micro_batches):
            loss, figures = self.objective.loss(self.engine, mb.to(self.dist.device), step)
            if poison:
                loss, figures.loss = loss * float("nan"), figures.loss * float("nan")
            stats = stats + figures
            if i == len(micro_batches) - 1:  # decide before the last backward
                totals = self._agree(stats)
                # A bad step's last backward is poisoned (ZeRO-3 then skips the update), decided
                # on the device: multiplying by exactly 1.0 changes nothing otherwise.
                bad = self.guard.flag(totals[0] / n, self.state)
                loss = loss * torch.where(bad, float("nan"), 1.0).to(loss.dtype)
            self.engine.backward(loss)
            self.engine.step()
        return self._outcome(step, lr, n, totals, stats.extra)

    def _agree(self, stats: StepStats) -> torch.Tensor:
        """The step's figures summed over ranks, and (last) how many ranks were asked to stop, so that
        all ranks agree on the update and the stop: one all-reduce, on the device."""
        flag = torch.tensor([float(self.stop.requested)], dtype=torch.float64, device=stats.loss.device)
        return all_reduce_(torch.cat([stats.flat(), flag]))

    def _outcome(self, step: int, lr: float, n: int, totals: torch.Tensor, extra: Iterable[str]) -> StepResult:
        """The step's figures on the host: one device-to-host copy per step (with the gradient norm);
        extra: the names of the objective's own figures in `totals`."""
        grad_norm = self.engine.get_global_grad_norm()
        on_device = torch.is_tensor(grad_norm)
        values = torch.cat([totals, grad_norm.reshape(1).to(totals)] if on_device else [totals]).tolist()
        if on_device:
            grad_norm = values.pop()
        s, stop = StepStats.named(values[:-1], extra), values[-1] > 0
        loss = s["loss"] / n
        reason = self.guard.reason(loss, self.state)  # the criterion flag() applied on the device
        applied = self.engine.was_step_applied()
        if reason is not None and applied:
            raise TrainingError(f"step {step}: DeepSpeed applied an update with non-finite gradients; this "
                                "DeepSpeed version does not discard such steps (use deepspeed>=0.19.8)")
        if reason is None and not applied:
            reason = "non-finite gradients"
        grad_norm = float(grad_norm) if applied and grad_norm is not None else float("nan")
        return StepResult(step, loss, lr, reason, stop, grad_norm, s["tokens"], s["masked"], s["correct"],
                          s["padding"], s["bucket_loss"], s["bucket_count"], s["extra"])

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, stop_after: Optional[int] = None) -> int:
        """Train to train.steps (or stop_after steps in this process), checkpointing on the way."""
        try:
            rc = self._run(stop_after)
            self.checkpoints.flush()  # object storage: the last save stored and published
            if self.remote is not None and self.dist.is_main:
                self.remote.push_logs()
            return rc
        finally:
            self.monitor.close()  # also on an error: the log and wandb are flushed

    def _run(self, stop_after: Optional[int]) -> int:
        cfg, state = self.cfg, self.state
        if state.step >= cfg.train.steps:
            self.monitor.print(f"nothing to do: the run already completed its {cfg.train.steps} steps")
            return 0
        self.stop.install()
        if self.stop.requested:
            self.monitor.print("stop requested by a signal before the first step: nothing new to save; exiting")
            return 0
        first = state.step
        stop_at = cfg.train.steps if stop_after is None else min(cfg.train.steps, first + stop_after)
        if state.step == 0 and cfg.eval.every:
            self.validate()  # the starting point of the validation curve
        while state.step < stop_at:
            r = self.train_step(state.step)
            self.guard.record(r.loss, r.skipped, state)
            if r.skipped:
                self.monitor.print(f"step {r.number}: update skipped ({r.reason}); {self.guard.bad_in_a_row} bad "
                                   "step(s) in a row")
            state.step, state.tokens_seen = r.step + 1, state.tokens_seen + int(r.tokens)
            self.monitor.report_step(r, state)
            if self.guard.must_recover:
                self.recover()
                continue
            if cfg.eval.every and state.step % cfg.eval.every == 0 and state.step < cfg.train.steps:
                self.validate()
            if r.stop:
                self.monitor.print(f"stop requested by a signal: saved {self.save().name} at step {state.step}; "
                                   "exiting")
                return 0
            # No periodic save during a run of bad steps: recovery must go back to a good state.
            if (cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0 and state.step < stop_at
                    and self.guard.bad_in_a_row == 0):
                self.save()
        if state.step < cfg.train.steps:
            path = self.save()
            self.monitor.print(f"stopped at step {state.step} after {state.step - first} step(s) in this process as "
                               f"asked: saved {path.name}; resume with --resume auto")
            return 0
        self.validate()
        path = self.save()
        self.monitor.print(f"done: {state.step} steps, {state.tokens_seen:,} tokens; final checkpoint {path}")
        return 0

    def validate(self) -> Optional[float]:
        loss = None if self.evaluator is None else self.evaluator(self.engine)
        if loss is not None:
            self.monitor.print(f"step {self.state.step:7d} | validation loss {loss:.4f}")
            self.monitor.step({"step": self.state.step, "val_loss": loss})
        return loss

    # -- checkpoints ----------------------------------------------------------------------------------
    def run_state(self) -> dict:
        return {**self.state.to_dict(), "data": self.data.batches.state(self.state.step).to_dict(),
                "model": self.model_cfg.to_dict(), "tokenizer": self.tokenizer.fingerprint,
                "world_size": self.dist.world, "config": self.cfg.to_dict()}

    def save(self) -> Path:
        """A checkpoint of the current step, with the run directory's config.yaml (the settings of the
        latest checkpoint, so a failed relaunch never leaves its own there) and, once, a copy of the
        tokenizer (so the run directory is self-contained)."""
        error = None
        if self.dist.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
                copy_tokenizer(self.tokenizer, self.run_dir / RUN_TOKENIZER)
            except OSError as exc:
                error = f"writing {self.run_dir}: {exc}"
        raise_if_any(error, CheckpointError, self.dist.device, f"rank 0 could not write {self.run_dir} (see its log)")
        return self.checkpoints.save(self.state.step, self.run_state())

    def _load(self, ckpt: Path) -> tuple[dict, Optional[Path]]:
        """Weights, optimizer and run state of a checkpoint: (its run state, the universal copy it
        was loaded through, if the world size changed)."""
        saved, via = self.checkpoints.load(ckpt)
        if via is not None:
            repair_universal_load(self.engine, self.cfg)
        wandb_id = self.state.wandb_id
        self.state.restore(saved)
        self.state.step = self.data.batches.resume_step(DataState.from_dict(saved["data"]), saved.get("step"))
        self.state.wandb_id = self.state.wandb_id or wandb_id
        return saved, via

    def _start(self, resume: str) -> str:
        """Continue from a checkpoint, or start from init_from's weights, or from scratch; a note."""
        ckpt = self.checkpoints.pick(resume)
        base = self.checkpoints.load_base(self.cfg.train.init_from, ckpt)  # LoRA: the frozen base first
        if ckpt is not None:
            saved, via = self._load(ckpt)
            return base if via is None else (f"resumed from {ckpt} (written by {saved.get('world_size')} ranks) "
                                             f"through its universal form {via}" + (f"; {base}" if base else ""))
        if base:
            return base
        if self.cfg.train.init_from:
            return f"weights initialised from {self.checkpoints.init_weights(self.cfg.train.init_from)}"
        return ""

    def recover(self) -> None:
        """Go back to the last checkpoint with a lower learning rate (after max_bad_steps bad steps)."""
        if self.state.recoveries >= self.cfg.recovery.max_recoveries:
            raise TrainingError(f"{self.cfg.recovery.max_bad_steps} bad steps in a row again after "
                                f"{self.state.recoveries} recoveries: giving up (recovery.max_recoveries)")
        ckpt = self.checkpoints.latest()
        if ckpt is None:
            raise TrainingError(f"{self.cfg.recovery.max_bad_steps} bad steps in a row and no checkpoint to go back to")
        recoveries, lr_scale = self.state.recoveries, self.state.lr_scale
        self._load(ckpt)
        self.state.recoveries, self.state.lr_scale = recoveries, lr_scale
        self.guard.recovered(self.state)
        self.monitor.print(f"recovery {self.state.recoveries}: reloaded {ckpt.name}, learning rate scale now "
                           f"{self.state.lr_scale:g}, continuing from step {self.state.step}")

    # -- reporting ------------------------------------------------------------------------------------
    def _monitor(self, on_log: Optional[Callable[[dict], None]]) -> Monitor:
        cfg, dist = self.cfg, self.dist
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        # Only rank 0 reports (on CPU the peak is measured: no need to run that on every rank).
        self.peak, self.peak_source = peak_tflops(dist.device, dtype, cfg.log.peak_tflops) if dist.is_main else (0.0, "")
        wandb_cfg = ({"project": cfg.log.wandb_project, "entity": cfg.log.wandb_entity, "name": cfg.log.wandb_name,
                      "tags": cfg.log.wandb_tags, "id": self.state.wandb_id, "config": cfg.to_dict()}
                     if cfg.log.wandb else None)
        lora = cfg.lora.spec()
        self.flops_per_token = (train_flops_per_token(self.model_cfg, cfg.data.seq_len, count(self.model_cfg))
                                if lora is None else lora_train_flops_per_token(self.model_cfg, cfg.data.seq_len, lora))
        return Monitor(self.run_dir, dist.is_main, self.flops_per_token, self.peak, dist.world, wandb_cfg,
                       log_every=cfg.log.every, total_steps=cfg.train.steps, global_batch=cfg.train.global_batch,
                       show_padding=cfg.objective.kind == "sft", device=dist.device, on_log=on_log)

    def _banner(self) -> str:
        cfg, dist = self.cfg, self.dist
        lora = cfg.lora.spec()
        trainable = "" if lora is None else \
            f" ({lora_parameter_count(self.model_cfg, lora.rank, lora.targets):,} trainable: LoRA adapters)"
        return (f"llada-ds: {count(self.model_cfg).total:,} parameters{trainable}, {dist.world} rank(s) on "
                f"{dist.device.type}, "
                f"global batch {cfg.train.global_batch} x {cfg.data.seq_len} tokens "
                f"(micro {cfg.train.micro_batch}, accumulation {self.data.batches.accumulation}), {cfg.train.precision}, "
                f"peak {self.peak:.2f} TFLOP/s per device ({self.peak_source}); starting at step {self.state.step}")
