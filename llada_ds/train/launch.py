"""`llada-ds train`: start N local processes of `python -m llada_ds.train` through torchrun.

A convenience for one machine; multi-node jobs use the deepspeed launcher, torchrun or the Ray job
(cluster/), which all run the same entry point. Before any process starts, the run's config is
checked (train/preflight.py): a bad key, value, data path or batch split is one line and exit code 2.

Signals: torchrun runs in a session of its own, and SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 sent to
llada-ds are forwarded to the training ranks, which finish their step, save a checkpoint and exit;
torchrun then ends normally and its exit code is returned (0 after a clean stop). A second signal
of the same kind also reaches torchrun, which ends the ranks. If llada-ds itself is killed, the
kernel sends torchrun SIGTERM (parent-death signal), so no process group is left behind training.
On CPU each rank gets an equal share of the cores (OMP_NUM_THREADS), without which ranks
oversubscribe the machine and run several times slower.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Optional

import psutil
import torch

from ..errors import ConfigError
from .preflight import preflight
from .signals import STOP_SIGNALS

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies (Linux; elsewhere nothing)."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class SignalForwarder:
    """Forward stop signals to the ranks under a torchrun process (once), then to torchrun too."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.seen: dict[int, int] = {}

    def __call__(self, signum: int, _frame) -> None:
        self.seen[signum] = self.seen.get(signum, 0) + 1
        try:
            targets = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        if self.seen[signum] > 1:
            targets.append(psutil.Process(self.proc.pid))
        for p in targets:
            try:
                p.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self)


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def launch(nproc: Optional[int], train_args: list[str]) -> int:
    if nproc is None:
        nproc = torch.cuda.device_count() or 1
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    preflight(train_args, nproc)
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llada_ds.train", *train_args]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
    SignalForwarder(proc).install()
    return exit_code(proc.wait())
