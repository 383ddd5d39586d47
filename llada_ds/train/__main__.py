"""`python -m llada_ds.train`: the one entry point every launcher runs.

    deepspeed --num_gpus N --module llada_ds.train --recipe R [--deepspeed_config ds_configs/zero3.json] [--a.b=c]
    torchrun --nproc_per_node N -m llada_ds.train --recipe R [--a.b=c]
    llada-ds train --nproc N --recipe R [--a.b=c]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..config import load_run_config
from ..errors import LladaError
from .distributed import exit_process, init_distributed, shutdown_distributed
from .engine import default_ds_config, load_ds_config
from .loop import Trainer


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m llada_ds.train", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, help="packaged recipe name (tiny, llada-1b, llada-8b) or a .yaml")
    parser.add_argument("--deepspeed_config", "--deepspeed-config", dest="ds_config", default=None,
                        help="DeepSpeed JSON (default: the packaged zero3.json on GPU, cpu.json on CPU)")
    parser.add_argument("--run-dir", "--run_dir", dest="run_dir", default=None,
                        help="checkpoints, logs and metrics: a directory or an object-store URI such as "
                             "s3://bucket/runs/NAME (default runs/RECIPE)")
    parser.add_argument("--resume", default="auto", help="auto (latest checkpoint if any), never, or a checkpoint dir")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="save and exit after this many steps in this process (e.g. a job time limit); "
                             "the run's numbers do not depend on it")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    # torch 2.13 deprecates collectives DeepSpeed still calls: ~1,000 identical lines per run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        cfg = load_run_config(args.recipe, overrides)
        ds_path = args.ds_config or default_ds_config()
        ds_config = load_ds_config(ds_path)
    except LladaError as exc:
        print(f"llada-ds train: error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or f"runs/{Path(args.recipe).stem}"  # a directory or an object-store URI
    dist = init_distributed()
    try:
        trainer = Trainer(cfg, ds_config, run_dir, args.resume, dist)
        rc = trainer.run(args.stop_after)
    except LladaError as exc:
        # No barrier here: the other ranks may never reach one (the error can be this rank's own).
        print(f"llada-ds train (rank {dist.rank}): error: {exc}", file=sys.stderr)
        return 1
    shutdown_distributed()
    return rc


if __name__ == "__main__":
    exit_process(main())
