"""Process-group setup for every launcher (deepspeed, torchrun, llada-ds train, Ray workers).

Launchers only set the usual variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); this
module turns them into an initialised process group: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Optional

import deepspeed
import deepspeed.comm  # noqa: F401  (its CPU backend module is patched below)
import torch
import torch.distributed as dist
from deepspeed.utils import logger as ds_logger


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    # DeepSpeed logs a few dozen INFO lines per rank at start-up; keep its warnings and errors.
    if not os.environ.get("LLADA_DS_VERBOSE"):
        ds_logger.setLevel(logging.WARNING)

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world == 1:
        # A single process still gets a process group (ZeRO-3 expects one) on a free local port.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        # DeepSpeed's CPU backend compiles a shared-memory all-reduce op (75-100 s on a fresh
        # machine) at process-group creation; gloo is enough for CPU runs, so skip the build.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistInfo(rank, world, local_rank, device)


def shutdown_distributed() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it.

    A rank that exits while a peer still talks to it (or with gloo's worker threads alive at
    interpreter teardown) can abort with "terminate called without an active exception"; every
    entry point ends through here instead of relying on exit-time destructors.
    """
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a training process after `shutdown_distributed`, skipping interpreter finalization.

    Everything of the run is written and closed by then. What finalization would still do is
    destroy Python objects that gloo's C++ worker threads (or DeepSpeed's asynchronous parameter
    gathers) may still reference, which can abort the process with "terminate called without an
    active exception" (SIGABRT, seen now and then on loaded machines) and turn a finished run into
    a failed one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (one collective), returned on the host."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    all_reduce_(t)
    return t.tolist()


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (nothing to do in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def raise_if_any(error: Optional[str], exc_type: type, device: torch.device, elsewhere: str) -> None:
    """Make a failure seen on one rank fail every rank (one collective, so also a barrier).

    A rank that raised alone would leave the others waiting in their next collective until the
    process-group timeout; here the failing rank raises its own message, the others `elsewhere`.
    """
    if all_reduce_sum([1.0 if error else 0.0], device)[0]:
        raise exc_type(error or elsewhere)


def from_main(value: Any) -> Any:
    """Rank 0's value on every rank (e.g. which checkpoint is `latest`, which another node may see
    late on a shared file system): all ranks act on one decision."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
