"""The one training loop, whatever started the processes (deepspeed, torchrun, llada-ds, Ray).

Per optimizer step s, on every rank:
    lr = schedule(s) * recovery scale
    for each micro-batch of this rank's slice of global batch s:
        batch  = diffusion forward process, noise keyed by (seed, s, global sample index)
        logits = engine(batch.noisy, logits_mask=batch.masked)
        loss   = weighted CE (LLADA_SPEC)           -> engine.backward, engine.step
A step whose global loss is non-finite or spikes is not applied: its last backward is poisoned
with NaN, which makes ZeRO-3 discard the gradients and skip the update (DeepSpeed's own overflow
path, so optimizer state stays untouched). After recovery.max_bad_steps consecutive bad steps the
loop reloads the last checkpoint, multiplies the learning rate by recovery.lr_factor and goes on.

Everything that decides the run's numbers (data order, noise, schedule) is a function of the step
and global counters, so a resumed run (any world size) computes what an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from ..config import ConfigError, RunConfig
from ..data.loader import DataState, DistributedBatches, WindowDataset
from ..data.shards import ShardError, ShardIndex, ShardSet
from ..data.storage import LocalStorage
from ..data.tokenizer import Tokenizer
from ..diffusion import (
    N_BUCKETS, NoiseConfig, autoregressive_loss, check_tokens, diffusion_loss, pretrain_batch, sft_batch,
)
from ..diffusion.noise import EVAL_STEP
from ..model.sizing import count, train_flops_per_token
from .checkpoint import (
    CheckpointError, check_compatible, latest_checkpoint, load_checkpoint, load_weights, newer_checkpoints,
    read_run_state, resolve_checkpoint, save_checkpoint,
)
from .distributed import DistInfo, all_reduce_sum, from_main, raise_if_any
from .elastic import is_converted
from .engine import build_engine, fill_ds_config, repair_universal_load, set_learning_rate
from .monitor import Monitor, memory_gib, peak_tflops
from .schedule import learning_rate
from ..errors import TrainingError




def _open_shards(path: str, cfg: RunConfig, tokenizer: Tokenizer, dist: DistInfo) -> ShardSet:
    """Open a shard set on every rank; each rank hashes its share of the shards, errors are shared."""
    error: Optional[str] = None
    shards = None
    try:
        n = len(ShardIndex.load(LocalStorage(path)).shards)
        shards = ShardSet(LocalStorage(path), verify=cfg.data.verify, tokenizer_fingerprint=tokenizer.fingerprint,
                          verify_shards=range(dist.rank, n, dist.world))
    except ShardError as exc:
        error = str(exc)
    raise_if_any(error, ShardError, dist.device, f"{path}: another rank found a corrupt or mismatching shard (see its log)")
    return shards


class Trainer:
    def __init__(self, cfg: RunConfig, ds_config: dict, run_dir: Path, resume: str, dist: DistInfo,
                 on_log: Optional[Callable[[dict], None]] = None) -> None:
        """on_log: called on every rank at each log interval with that interval's figures (the Ray
        job reports them to Ray Train, whose report is a collective: every rank must call it)."""
        self.cfg, self.run_dir, self.dist, self.on_log = cfg, run_dir, dist, on_log
        self.ckpt_root = run_dir / "checkpoints"
        self.model_cfg = cfg.model.build()
        self.tokenizer = Tokenizer.load(cfg.data.tokenizer)
        if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
            raise ConfigError(f"tokenizer {cfg.data.tokenizer} has {self.tokenizer.vocab_size} tokens, more than "
                              f"model.vocab_size={self.model_cfg.vocab_size}")
        self.mask_id = self.tokenizer.special.mask
        self.val_shards = self.val_sft = None
        if cfg.objective.kind == "sft":  # conversations cached by `llada-ds sft-data`
            from ..data.sft import SFTBatches, SFTData

            train = SFTData(cfg.data.train, self.tokenizer.fingerprint, cfg.data.verify)
            self.batches = SFTBatches(train, cfg.train.global_batch, cfg.train.micro_batch, cfg.data.seed,
                                      cfg.data.seq_len, dist.rank, dist.world)
            if cfg.data.validation:
                self.val_sft = SFTData(cfg.data.validation, self.tokenizer.fingerprint, cfg.data.verify)
        else:
            self.train_shards = _open_shards(cfg.data.train, cfg, self.tokenizer, dist)
            if cfg.data.validation:
                self.val_shards = _open_shards(cfg.data.validation, cfg, self.tokenizer, dist)
            dataset = WindowDataset(self.train_shards, cfg.data.seq_len, cfg.data.seed)
            self.batches = DistributedBatches(dataset, cfg.train.global_batch, cfg.train.micro_batch, dist.rank,
                                              dist.world, cfg.data.document_masking)
        self.noise = NoiseConfig(cfg.objective.noise_seed, cfg.objective.eps, cfg.objective.random_length_prob)
        self.ds_config = fill_ds_config(ds_config, cfg, dist.world)
        self.engine, _ = build_engine(cfg, self.model_cfg, self.ds_config, dist)
        self.dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32

        # Run state: everything besides DeepSpeed's tensors that a resume needs.
        self.step = 0
        self.lr_scale = 1.0
        self.recoveries = 0
        self.tokens_seen = 0
        self.loss_ema: Optional[float] = None
        self.good_steps = 0
        self.wandb_id: Optional[str] = None
        self._injected: set[int] = set()
        self._stop_signal: Optional[int] = None
        self.monitor_note = ""
        self._resume(self._pick_checkpoint(resume))

        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        params = count(self.model_cfg)
        self.flops_per_token = train_flops_per_token(self.model_cfg, cfg.data.seq_len, params)
        # Only rank 0 reports (on CPU the peak is measured: no need to run that on every rank).
        peak, peak_source = peak_tflops(dist.device, self.dtype, cfg.log.peak_tflops) if dist.is_main else (0.0, "")
        wandb_cfg = ({"project": cfg.log.wandb_project, "id": self.wandb_id, "config": cfg.to_dict()}
                     if cfg.log.wandb else None)
        self.monitor = Monitor(run_dir, dist.is_main, self.flops_per_token, peak, dist.world, wandb_cfg)
        self.wandb_id = self.monitor.wandb_id or self.wandb_id
        self.monitor.print(
            f"llada-ds: {params.total:,} parameters, {dist.world} rank(s) on {dist.device.type}, "
            f"global batch {cfg.train.global_batch} x {cfg.data.seq_len} tokens "
            f"(micro {cfg.train.micro_batch}, accumulation {self.batches.accumulation}), {cfg.train.precision}, "
            f"peak {peak:.2f} TFLOP/s per device ({peak_source}); starting at step {self.step}"
            + (f"; {self.monitor_note}" if self.monitor_note else "")
        )

    # -- state ----------------------------------------------------------------------------------
    def run_state(self) -> dict:
        return {
            "step": self.step, "data": self.batches.state(self.step).to_dict(), "lr_scale": self.lr_scale,
            "recoveries": self.recoveries, "tokens_seen": self.tokens_seen, "loss_ema": self.loss_ema,
            "good_steps": self.good_steps, "wandb_id": self.wandb_id, "model": self.model_cfg.to_dict(),
            "tokenizer": self.tokenizer.fingerprint, "world_size": self.dist.world, "config": self.cfg.to_dict(),
        }

    def _restore(self, state: dict) -> None:
        self.step = self.batches.resume_step(DataState.from_dict(state["data"]))
        self.lr_scale = state["lr_scale"]
        self.recoveries = state["recoveries"]
        self.tokens_seen = state["tokens_seen"]
        self.loss_ema = state["loss_ema"]
        self.good_steps = state["good_steps"]
        self.wandb_id = state.get("wandb_id")

    def _pick_checkpoint(self, resume: str) -> Optional[Path]:
        """The checkpoint this run continues from (None: a fresh start), checked against the run."""
        if resume == "never":
            if latest_checkpoint(self.ckpt_root) is not None:
                raise CheckpointError(f"{self.run_dir} already holds checkpoints; use --resume auto or another run dir")
            return None
        ckpt = from_main(latest_checkpoint(self.ckpt_root)) if resume == "auto" else Path(resume)
        if ckpt is None:
            return None
        state = read_run_state(ckpt)
        check_compatible(state, self.model_cfg.to_dict(), self.tokenizer.fingerprint, ckpt)
        if resume != "auto" and ckpt.parent.resolve() == self.ckpt_root.resolve():
            newer = newer_checkpoints(self.ckpt_root, state["step"])
            if newer:
                raise CheckpointError(
                    f"{self.ckpt_root} holds checkpoints newer than {ckpt.name} ({', '.join(newer)}); resuming "
                    "from an older one here would mix two histories: use another --run-dir or remove them")
        return ckpt

    def _universal(self, ckpt: Path) -> Path:
        """The universal form of `ckpt` (written by another world size), converted once by rank 0."""
        from .elastic import convert_to_universal, universal_path

        error: Optional[str] = None
        if self.dist.is_main:
            try:
                convert_to_universal(ckpt)
            except (CheckpointError, OSError) as exc:
                error = str(exc)
        raise_if_any(error, CheckpointError, self.dist.device,
                     f"rank 0 could not convert {ckpt} to a universal checkpoint (see its log)")
        return universal_path(ckpt)

    def _load(self, ckpt: Path) -> tuple[dict, Optional[Path]]:
        """Load a complete checkpoint (weights, optimizer, run state) written by any world size:
        (run state, the universal copy it was loaded through, if the world size differed)."""
        universal = is_converted(ckpt) or read_run_state(ckpt).get("world_size", self.dist.world) != self.dist.world
        via = (ckpt if is_converted(ckpt) else self._universal(ckpt)) if universal else None
        # DeepSpeed consults this switch only while loading: on for this load alone, so a later
        # load (recovery) of a checkpoint written at this world size takes the ordinary path.
        self.engine._config.load_universal_checkpoint = universal
        try:
            state = load_checkpoint(self.engine, via or ckpt)
        finally:
            self.engine._config.load_universal_checkpoint = False
        if universal:
            repair_universal_load(self.engine, self.cfg)
        return state, via

    def _resume(self, ckpt: Optional[Path]) -> None:
        if ckpt is not None:
            state, via = self._load(ckpt)
            self._restore(state)
            if via is not None:
                self.monitor_note = (f"resumed from {ckpt} (written by {state.get('world_size')} ranks) through its "
                                     f"universal form {via}")
        elif self.cfg.train.init_from:
            src = Path(self.cfg.train.init_from)
            if (src / "config.json").is_file():  # a Hugging Face folder in LLaDA's layout
                from ..hf.adapter import model_config_from_llada

                theirs = model_config_from_llada(json.loads((src / "config.json").read_text()), str(src))
                check_compatible({"model": theirs.to_dict(), "tokenizer": self.tokenizer.fingerprint},
                                 self.model_cfg.to_dict(), self.tokenizer.fingerprint, src)
            else:
                src = resolve_checkpoint(src)
                check_compatible(read_run_state(src), self.model_cfg.to_dict(), self.tokenizer.fingerprint, src)
            load_weights(self.engine, src, self.dist)
            self.monitor_note = f"weights initialised from {src}"

    # -- the step -------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self._stop_signal = signum

        # SIGUSR1: what SLURM sends ahead of the time limit with --signal=USR1@300, leaving time
        # to save a large model before the SIGTERM / SIGKILL that follows. Only the main thread
        # may install handlers (Ray Train runs the loop in a worker thread; Ray owns signals there).
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, handler)

    def train_step(self, step: int) -> dict:
        cfg, dist = self.cfg, self.dist
        lr = learning_rate(step, cfg.train.steps, cfg.optim.lr, cfg.schedule) * self.lr_scale
        set_learning_rate(self.engine, lr)
        error: Optional[str] = None
        try:
            micro_batches = self.batches.step(step)
        except ShardError as exc:  # found on this rank only: tell every rank before anyone waits
            error = str(exc)
        raise_if_any(error, ShardError, dist.device, f"step {step}: another rank read corrupt data (see its log)")
        inject = step in cfg.recovery.inject_nonfinite_steps and step not in self._injected
        if inject:
            self._injected.add(step)
        reason: Optional[str] = None
        local = np.zeros(4 + 2 * N_BUCKETS)  # loss sum, masked, correct, tokens, bucket losses, counts
        padding = 0
        for i, mb in enumerate(micro_batches):
            docs = None if mb.doc_ids is None else mb.doc_ids.to(dist.device)
            prompts = getattr(mb, "prompt_lengths", None)
            padding += getattr(mb, "padding", 0)
            out, n_tokens = self._loss(mb.tokens.to(dist.device), mb.sample_indices, step, docs, self.noise,
                                       None if prompts is None else prompts.to(dist.device))
            loss = out.loss * float("nan") if inject else out.loss
            local[:4] += [loss.item(), out.n_masked.item(), out.n_correct.item(), n_tokens]
            local[4:] += np.concatenate([out.bucket_loss.cpu().numpy(), out.bucket_count.cpu().numpy()])
            if i == len(micro_batches) - 1:
                # Decide before the last backward whether this step may update the weights; the
                # same all-reduce carries the stop request so that all ranks agree on both.
                totals = np.array(all_reduce_sum(local.tolist() + [float(padding), float(self._stop_signal is not None)],
                                                 dist.device))
                mean_loss = totals[0] / (len(micro_batches) * dist.world)
                reason = self._bad_step_reason(mean_loss)
                if reason:
                    loss = loss * float("nan")  # ZeRO-3 sees non-finite gradients and skips the update
            self.engine.backward(loss)
            self.engine.step()
        applied = self.engine.was_step_applied()
        if reason is not None and applied:
            raise TrainingError(f"step {step}: DeepSpeed applied an update with non-finite gradients; this "
                                "DeepSpeed version does not discard such steps (use deepspeed>=0.19.8)")
        if reason is None and not applied:
            reason = "non-finite gradients"
        grad_norm = self.engine.get_global_grad_norm() if applied else float("nan")
        return {
            "loss": mean_loss, "lr": lr, "reason": reason, "stop": totals[-1] > 0,
            "masked": totals[1], "correct": totals[2], "tokens": totals[3],
            "bucket_loss": totals[4 : 4 + N_BUCKETS], "bucket_count": totals[4 + N_BUCKETS : 4 + 2 * N_BUCKETS],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "padding": totals[-2],
        }

    def _loss(self, tokens: torch.Tensor, indices: list[int], step: int, docs: Optional[torch.Tensor],
              noise: NoiseConfig, prompt_lengths: Optional[torch.Tensor] = None) -> tuple:
        """(loss container, tokens processed) of one micro-batch, for the configured objective."""
        if self.cfg.objective.kind == "sft":
            batch = sft_batch(tokens, prompt_lengths, indices, step, self.mask_id, noise,
                              vocab_size=self.model_cfg.vocab_size)
            logits = self.engine(batch.noisy, logits_mask=batch.masked)
            return diffusion_loss(logits, batch, N_BUCKETS), batch.target.numel()
        if self.cfg.objective.kind == "ar":  # the autoregressive baseline: same model, causal mask
            check_tokens(tokens, self.mask_id, self.model_cfg.vocab_size, indices)
            return autoregressive_loss(self.engine(tokens, doc_ids=docs, causal=True), tokens), tokens.numel()
        batch = pretrain_batch(tokens, indices, step, self.mask_id, noise, doc_ids=docs,
                               vocab_size=self.model_cfg.vocab_size)
        logits = self.engine(batch.noisy, doc_ids=batch.doc_ids, logits_mask=batch.masked)
        return diffusion_loss(logits, batch, N_BUCKETS), batch.target.numel()

    def _bad_step_reason(self, mean_loss: float) -> Optional[str]:
        if not math.isfinite(mean_loss):
            return "non-finite loss"
        rec = self.cfg.recovery
        if (rec.spike_factor and self.loss_ema is not None and self.good_steps >= rec.spike_warmup_steps
                and mean_loss > rec.spike_factor * self.loss_ema):
            return f"loss spike ({mean_loss:.3g} > {rec.spike_factor:g} x running mean {self.loss_ema:.3g})"
        return None

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        """Validation loss (the pre-training objective, an ELBO bound) on fixed windows and noise."""
        cfg, dist = self.cfg, self.dist
        if self.val_sft is not None:
            return self._evaluate_sft()
        if self.val_shards is None:
            return None
        per_round = dist.world * cfg.train.micro_batch
        n_windows = self.val_shards.total_tokens // cfg.data.seq_len
        n = min(cfg.eval.samples, n_windows) // per_round * per_round  # equal forwards on every rank
        if n == 0:
            return None
        noise = NoiseConfig(self.noise.seed, self.noise.eps, random_length_prob=0.0)
        self.engine.eval()
        total = np.zeros(2)
        for start in range(0, n, per_round):
            idx = list(range(start + dist.rank * cfg.train.micro_batch, start + (dist.rank + 1) * cfg.train.micro_batch))
            tokens = torch.from_numpy(self.val_shards.read_windows(np.array(idx) * cfg.data.seq_len, cfg.data.seq_len))
            out, _ = self._loss(tokens.to(dist.device), idx, EVAL_STEP, None, noise)
            total += [out.loss.item() * len(idx), len(idx)]
        self.engine.train()
        s = all_reduce_sum(total.tolist(), dist.device)
        return s[0] / s[1]

    @torch.no_grad()
    def _evaluate_sft(self) -> Optional[float]:
        """SFT loss on the first validation pairs, bucketed by length, fixed noise."""
        from ..data.sft import pad_micro_batch

        cfg, dist, data = self.cfg, self.dist, self.val_sft
        m = cfg.train.micro_batch
        n = min(cfg.eval.samples, len(data.table)) // (dist.world * m) * (dist.world * m)
        if n == 0:
            return None
        rows = sorted(range(n), key=lambda r: (int(data.table[r, 3]), r))
        chunks = [rows[i : i + m] for i in range(0, n, m)][dist.rank :: dist.world]
        noise = NoiseConfig(self.noise.seed, self.noise.eps, random_length_prob=0.0)
        self.engine.eval()
        total = np.zeros(2)
        for chunk in chunks:
            mb = pad_micro_batch([data.sample(r) for r in chunk], chunk, data.eos, cfg.data.seq_len)
            out, _ = self._loss(mb.tokens.to(dist.device), chunk, EVAL_STEP, None, noise,
                                mb.prompt_lengths.to(dist.device))
            total += [out.loss.item() * len(chunk), len(chunk)]
        self.engine.train()
        s = all_reduce_sum(total.tolist(), dist.device)
        return s[0] / s[1]

    # -- the loop -------------------------------------------------------------------------------
    def save(self) -> Path:
        return save_checkpoint(self.engine, self.ckpt_root, self.step, self.run_state(), self.dist,
                               self.cfg.checkpoint.keep_last, self.cfg.recovery.save_delay_seconds)

    def _recover(self) -> None:
        if self.recoveries >= self.cfg.recovery.max_recoveries:
            raise TrainingError(f"{self.cfg.recovery.max_bad_steps} bad steps in a row again after "
                                f"{self.recoveries} recoveries: giving up (recovery.max_recoveries)")
        ckpt = from_main(latest_checkpoint(self.ckpt_root))
        if ckpt is None:
            raise TrainingError(f"{self.cfg.recovery.max_bad_steps} bad steps in a row and no checkpoint to go back to")
        # Counted across recoveries: the checkpoint may predate the last one (no save in between),
        # and its own counters must not undo it, or a recurring bad streak would loop forever.
        recoveries, lr_scale = self.recoveries + 1, self.lr_scale * self.cfg.recovery.lr_factor
        self._restore(self._load(ckpt)[0])
        self.recoveries, self.lr_scale = recoveries, lr_scale
        self.monitor.print(f"recovery {self.recoveries}: reloaded {ckpt.name}, learning rate scale now "
                           f"{self.lr_scale:g}, continuing from step {self.step}")

    def run(self, stop_after: Optional[int] = None) -> int:
        """Train to train.steps (or stop_after steps in this process), checkpointing on the way."""
        try:
            return self._run(stop_after)
        finally:
            self.monitor.close()  # also on an error: the log and wandb are flushed

    def _run(self, stop_after: Optional[int]) -> int:
        cfg = self.cfg
        if self.step >= cfg.train.steps:
            self.monitor.print(f"nothing to do: the run already completed its {cfg.train.steps} steps")
            return 0
        self._install_signal_handlers()
        stop_at = cfg.train.steps if stop_after is None else min(cfg.train.steps, self.step + stop_after)
        if self.step == 0 and cfg.eval.every:
            self._log_eval()  # the starting point of the validation curve
        bad_in_a_row = 0
        window = self._new_window()
        while self.step < stop_at:
            step = self.step
            r = self.train_step(step)
            if r["reason"]:
                bad_in_a_row += 1
                self.monitor.print(f"step {step}: update skipped ({r['reason']}); {bad_in_a_row} bad step(s) in a row")
            else:
                bad_in_a_row = 0
                self.good_steps += 1
                self.loss_ema = r["loss"] if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * r["loss"]
            self.step = step + 1
            self.tokens_seen += int(r["tokens"])
            window["tokens"] += r["tokens"]
            window["padding"] += r["padding"]
            if not r["reason"]:
                window["good"] += 1
                window["loss"] += r["loss"]
                window["acc"][0] += r["correct"]
                window["acc"][1] += r["masked"]
            elapsed = time.perf_counter() - window["start"]
            record = {"step": step, "time": time.time(), "loss": r["loss"], "lr": r["lr"], "tokens_seen": self.tokens_seen,
                      "samples_seen": self.step * cfg.train.global_batch, "grad_norm": r["grad_norm"],
                      "tokens_per_s": window["tokens"] / max(elapsed, 1e-9), "masked_acc": r["correct"] / max(r["masked"], 1),
                      "skipped": bool(r["reason"]), "lr_scale": self.lr_scale}
            if cfg.objective.kind == "sft":  # EOS padding beyond each answer, as a share of the tokens
                record["padding_share"] = r["padding"] / max(r["tokens"], 1)
            counts = r["bucket_count"]
            for k in range(N_BUCKETS):
                if counts[k]:
                    record[f"loss_t{k}"] = r["bucket_loss"][k] / counts[k]
            self.monitor.step(record)
            if self.step % cfg.log.every == 0 or self.step == cfg.train.steps:
                pad = f" | padding {100 * window['padding'] / max(window['tokens'], 1):.1f}%" \
                    if cfg.objective.kind == "sft" else ""
                self.monitor.print(self.monitor.interval_line(
                    step, window["loss"] / max(window["good"], 1), window["acc"][0] / max(window["acc"][1], 1),
                    r["lr"], window["tokens"], elapsed, memory_gib(self.dist.device), pad))
                if self.on_log is not None:
                    self.on_log({"step": self.step, "loss": window["loss"] / max(window["good"], 1), "lr": r["lr"],
                                 "tokens_seen": self.tokens_seen, "tokens_per_s": window["tokens"] / max(elapsed, 1e-9),
                                 "world_size": self.dist.world})
                window = self._new_window()
            if bad_in_a_row >= cfg.recovery.max_bad_steps:
                self._recover()
                bad_in_a_row = 0
                continue
            if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.train.steps:
                self._log_eval()
            if r["stop"]:
                path = self.save()
                self.monitor.print(f"stop requested by a signal: saved {path.name} at step {self.step}; exiting")
                return 0
            # No periodic save during a run of bad steps: recovery must go back to a good state.
            if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < stop_at
                    and bad_in_a_row == 0):
                self.save()
        if self.step < cfg.train.steps:
            path = self.save()
            self.monitor.print(f"stopped after {self.step} steps as asked: saved {path.name}; resume with --resume auto")
            return 0
        self._log_eval()
        path = self.save()
        self.monitor.print(f"done: {self.step} steps, {self.tokens_seen:,} tokens; final checkpoint {path}")
        return 0

    @staticmethod
    def _new_window() -> dict:
        return {"loss": 0.0, "acc": [0.0, 0.0], "tokens": 0.0, "padding": 0.0, "good": 0, "start": time.perf_counter()}

    def _log_eval(self) -> None:
        loss = self.evaluate()
        if loss is not None:
            self.monitor.print(f"step {self.step:7d} | validation loss {loss:.4f}")
            self.monitor.step({"step": self.step - 1, "val_loss": loss})
