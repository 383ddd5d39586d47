"""`python -m llada_ds.train`: the one entry point every launcher runs.

    llada-ds train --nproc N --recipe R [--a.b=c]
    torchrun --nproc_per_node N -m llada_ds.train --recipe R [--a.b=c]
    deepspeed --num_gpus N --module llada_ds.train --recipe R [--deepspeed_config ds_configs/zero3.json] [--a.b=c]

Exit codes: 0 when the run completed or stopped as asked (a checkpoint saved); 2 for a bad recipe,
override, path or batch split (checked before anything is built); 1 when training failed.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from ..data.storage import is_uri
from ..errors import LladaError
from .distributed import exit_process, init_distributed, shutdown_distributed
from .loop import Trainer
from .preflight import preflight, run_dir_of
from .signals import StopRequest


def _log_error(run_dir: str | Path, line: str) -> None:
    """Errors go to train.log too when the run directory exists locally (a relaunch's failure is on
    record; a run directory in object storage gets its log with the next checkpoint)."""
    if not is_uri(str(run_dir)) and Path(run_dir).is_dir():
        with open(run_dir / "train.log", "a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    # Catch stop signals from the start: a SIGTERM while the model is being built still ends in a
    # clean stop (nothing is saved before the first step) instead of a traceback.
    stop = StopRequest()
    stop.install()
    # torch 2.13 deprecates collectives DeepSpeed still calls: ~1,000 identical lines per run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        args, cfg, ds_config = preflight(sys.argv[1:] if argv is None else argv, int(os.environ.get("WORLD_SIZE", 1)))
    except LladaError as exc:
        print(f"llada-ds train: error: {exc}", file=sys.stderr)
        return 2
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    run_dir = run_dir_of(args)
    dist = init_distributed()
    try:
        trainer = Trainer(cfg, ds_config, run_dir, args.resume, dist, stop=stop)
        rc = trainer.run(args.stop_after)
    except LladaError as exc:
        # No barrier here: the other ranks may never reach one (the error can be this rank's own).
        line = f"llada-ds train (rank {dist.rank}): error: {exc}"
        print(line, file=sys.stderr)
        _log_error(run_dir, line)
        return 1
    shutdown_distributed()
    return rc


if __name__ == "__main__":
    exit_process(main())
