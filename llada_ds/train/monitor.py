"""What rank 0 reports: one log line per interval, metrics.jsonl per step, optional wandb.

Steps are counted from 1 everywhere a user sees them: the record of the fifth optimizer step says
"step": 5, as do the console line after it, its checkpoint step-00000005, and a validation run after
it; the validation before training is step 0. Per step, metrics.jsonl gets the step's loss, learning rate, counters, gradient norm, throughput,
masked-token accuracy and loss by t-bucket; every log.every steps one line sums up the interval
since the last one (its loss is the mean over applied steps, its throughput over all of them).

MFU = achieved model FLOPs / peak FLOPs of the devices, with model FLOPs per token from
llada_ds.model.sizing (6 N + 12 L d s: bidirectional attention counted fully). The peak is the
config's log.peak_tflops, else a table of known GPUs (dense bf16), else measured: on CPU (or an
unknown GPU) a short matmul benchmark gives the rate this device actually reaches.
"""

from __future__ import annotations

import json
import netrc
import os
import platform
import secrets
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

import psutil
import torch

from ..errors import ConfigError
from .state import RunState, StepResult

KNOWN_PEAK_TFLOPS = {  # dense bf16 tensor-core peaks
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
    "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "A10": 125.0,
}


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 8) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_tflops(device: torch.device, dtype: torch.dtype, configured: Optional[float]) -> tuple[float, str]:
    if configured:
        return configured, "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return value, f"{name} bf16 peak"
    return measured_peak(device, dtype)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The matmul rate this device reaches: the best of three measurements now and of every earlier
    one on this machine (same device, dtype and thread count), kept in a cache. A measurement on a
    busy machine only underestimates the peak, so the best one seen is the closest to it, and MFU
    figures of different runs become comparable (measured once per start, they varied with load)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llada-ds" / "matmul_peak.json"
    key = f"{_device_name(device)} | {dtype} | {torch.get_num_threads()} threads"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    now = max(measure_matmul_tflops(device, dtype) for _ in range(3))
    if now > known.get(key, 0.0):
        known[key] = now
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=1) + "\n")
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: this run's measurement only
    return known[key], f"best measured {dtype} matmul on {device.type} (kept in {cache})"


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process(os.getpid()).memory_info().rss / 2**30


def wandb_mode() -> str:
    """WANDB_MODE when set; else online if the user has credentials (WANDB_API_KEY, or `wandb login`'s
    entry in ~/.netrc), else offline: a run never fails for lack of an account or a network."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one that cannot be read
        return "offline"


class MetricsWindow:
    """Sums over the steps since the last log line."""

    def __init__(self) -> None:
        self.loss = self.correct = self.masked = self.tokens = self.padding = 0.0
        self.good = 0
        self.start = time.perf_counter()

    def add(self, r: StepResult) -> None:
        self.tokens += r.tokens
        self.padding += r.padding
        if not r.skipped:
            self.good += 1
            self.loss += r.loss
            self.correct += r.correct
            self.masked += r.masked

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.good, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.masked, 1)


class Monitor:
    """Rank 0's reporting; other ranks get a Monitor that only passes the interval figures on.

    on_log: called on every rank at each log interval with that interval's figures (the Ray job
    reports them to Ray Train, whose report is a collective: every rank must call it).
    """

    def __init__(self, run_dir: Path, active: bool, flops_per_token: float, peak: float, world: int,
                 wandb_cfg: Optional[dict] = None, *, log_every: int = 10, total_steps: int = 0,
                 global_batch: int = 0, show_padding: bool = False, device: torch.device = torch.device("cpu"),
                 on_log: Optional[Callable[[dict], None]] = None) -> None:
        self.active, self.flops_per_token, self.peak, self.world = active, flops_per_token, peak, world
        self.log_every, self.total_steps, self.global_batch = log_every, total_steps, global_batch
        self.show_padding, self.device, self.on_log = show_padding, device, on_log
        self.metrics_path = run_dir / "metrics.jsonl"
        self.log_path = run_dir / "train.log"
        if active:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.window = MetricsWindow()
        self.wandb = None
        self.wandb_id: Optional[str] = None
        if active and wandb_cfg:
            self._start_wandb(run_dir, wandb_cfg)

    def _start_wandb(self, run_dir: Path, cfg: dict) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("log.wandb=true needs wandb: pip install 'llada-ds[wandb]'") from None
        run_dir.mkdir(parents=True, exist_ok=True)
        # The run id lives in the checkpoint, so a resumed job continues the same wandb run.
        self.wandb_id = cfg.get("id") or secrets.token_hex(4)
        self.wandb = wandb.init(project=cfg["project"], entity=cfg.get("entity") or None,
                                name=cfg.get("name") or run_dir.resolve().name, tags=cfg.get("tags") or None,
                                id=self.wandb_id, resume="allow", dir=str(run_dir), mode=wandb_mode(),
                                config=cfg.get("config"))

    def print(self, line: str) -> None:
        if not self.active:
            return
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def step(self, record: dict) -> None:
        if not self.active:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def report_step(self, r: StepResult, state: RunState) -> None:
        """metrics.jsonl for this step; the interval's line and on_log every log.every steps."""
        self.window.add(r)
        w = self.window
        record = {"step": r.number, "time": time.time(), "loss": r.loss, "lr": r.lr, "tokens_seen": state.tokens_seen,
                  "samples_seen": state.step * self.global_batch, "grad_norm": r.grad_norm,
                  "tokens_per_s": w.tokens / max(w.seconds, 1e-9), "masked_acc": r.correct / max(r.masked, 1),
                  "skipped": r.skipped, "lr_scale": state.lr_scale}
        if self.show_padding:  # EOS padding beyond each answer, as a share of the tokens
            record["padding_share"] = r.padding / max(r.tokens, 1)
        for k, count in enumerate(r.bucket_count):
            if count:
                record[f"loss_t{k}"] = r.bucket_loss[k] / count
        self.step(record)
        if state.step % self.log_every == 0 or state.step == self.total_steps:
            pad = f" | padding {100 * w.padding / max(w.tokens, 1):.1f}%" if self.show_padding else ""
            self.print(self.interval_line(r.number, w.mean_loss, w.accuracy, r.lr, w.tokens, w.seconds,
                                          memory_gib(self.device), pad))
            if self.on_log is not None:
                self.on_log({"step": state.step, "loss": w.mean_loss, "lr": r.lr, "tokens_seen": state.tokens_seen,
                             "tokens_per_s": w.tokens / max(w.seconds, 1e-9), "world_size": self.world})
            self.window = MetricsWindow()

    def interval_line(self, step: int, loss: float, acc: float, lr: float, tokens: float, seconds: float,
                      mem: float, extra: str = "") -> str:
        tps = tokens / max(seconds, 1e-9)
        tflops = tps * self.flops_per_token / self.world / 1e12
        mfu = tflops / self.peak if self.peak else float("nan")
        return (f"step {step:7d} | loss {loss:8.4f} | masked acc {acc:6.3f} | lr {lr:9.3e} | "
                f"tok/s {tps:10.0f} ({tps / self.world:.0f}/dev) | TFLOP/s/dev {tflops:7.3f} | MFU {100 * mfu:5.1f}% "
                f"| mem {mem:6.2f} GiB{extra}")

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
