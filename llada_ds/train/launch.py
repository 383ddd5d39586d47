"""`llada-ds train`: start N local processes of `python -m llada_ds.train` through torchrun.

A convenience for one machine; multi-node jobs use the deepspeed launcher, torchrun or the Ray job
(cluster/), which all run the same entry point. On CPU each rank gets an equal share of the cores
(OMP_NUM_THREADS), without which ranks oversubscribe the machine and run several times slower.
"""

from __future__ import annotations

import os
import subprocess
import sys


def launch(nproc: int, train_args: list[str]) -> int:
    import torch

    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llada_ds.train", *train_args]
    return subprocess.call(cmd, env=env)
