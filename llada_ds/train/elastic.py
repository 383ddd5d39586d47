"""Resuming on another number of ranks: ZeRO-3 shards -> DeepSpeed's universal checkpoint.

A ZeRO-3 checkpoint holds one flat optimizer partition per rank, which only loads at the world
size that wrote it. DeepSpeed's own converter (`deepspeed.checkpoint.ds_to_universal`) merges the
partitions into per-parameter files (fp32 master weights, Adam moments) that any world size can
slice again; the engine reads them with `checkpoint.load_universal`. We only add what a run needs
around it: where the converted copy lives, that it is published atomically (a conversion cut
short is never taken for a complete one), and that our run state travels with it.

    RUN_DIR/checkpoints/step-00000100/            written by 2 ranks
    RUN_DIR/checkpoints/universal/step-00000100/  the same step, loadable by any number of ranks
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError
from ..weights import RUN_STATE, read_run_state, resolve_checkpoint

UNIVERSAL = "universal"
MARKER = "universal.json"  # written last, before the atomic rename: says what was converted


def universal_path(ckpt: Path) -> Path:
    """Where the universal copy of checkpoint directory `ckpt` lives (beside its siblings)."""
    return ckpt.parent / UNIVERSAL / ckpt.name


def is_converted(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / RUN_STATE).is_file()


def default_workers() -> int:
    """Processes for DeepSpeed's extraction and merge: the CPUs, at most 8 (the other ranks wait)."""
    return max(1, min(8, os.cpu_count() or 1))


def convert_to_universal(ckpt: Path, out: Optional[Path] = None, workers: Optional[int] = None) -> Path:
    """Convert one complete checkpoint (a step directory) with DeepSpeed's ds_to_universal.

    Idempotent: an existing complete conversion is returned as is. The converter runs in its own
    process (it starts worker pools, which must not inherit a process group or CUDA context).
    """
    state = read_run_state(ckpt)  # refuses an incomplete checkpoint, naming it
    out = out or universal_path(ckpt)
    if is_converted(out):
        return out
    if not any(ckpt.glob("*model_states.pt")):
        raise CheckpointError(f"{ckpt}: no DeepSpeed model states in it (an imported or exported folder?); "
                              "only training checkpoints can be converted")
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
           "--output_folder", str(partial), "--num_extract_workers", str(workers or default_workers()),
           "--num_merge_workers", str(workers or default_workers())]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(f"converting {ckpt} to a universal checkpoint failed (ds_to_universal exit code "
                              f"{res.returncode}):\n{(res.stdout + res.stderr)[-2000:]}")
    shutil.copy2(ckpt / RUN_STATE, partial / RUN_STATE)
    (partial / MARKER).write_text(json.dumps({"source": str(ckpt), "step": state["step"],
                                              "world_size": state.get("world_size")}, indent=1) + "\n")
    if out.exists():  # a stale, incomplete conversion under the final name
        shutil.rmtree(out)
    os.replace(partial, out)
    # ds_to_universal names its output folder in `latest_universal` beside it, which here is the
    # temporary name: point it at the published one (DeepSpeed's tag = the folder's name).
    (out.parent / "latest_universal").write_text(out.name)
    return out


def prune_universal(ckpt_root: Path, keep: set[str]) -> None:
    """Remove universal copies whose source checkpoint is gone (and crashed conversions)."""
    root = ckpt_root / UNIVERSAL
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(".") or p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    """`python tools/elastic_resume.py CKPT`: convert ahead of a resume on another world size."""
    parser = argparse.ArgumentParser(
        prog="elastic_resume.py",
        description="Convert a ZeRO-3 checkpoint (written by N ranks) to DeepSpeed's universal form, which any "
                    "number of ranks can load. Training does this itself when it resumes on another world size; "
                    "run it by hand to convert ahead of time (e.g. on a CPU node) or to inspect the result.")
    parser.add_argument("checkpoint", type=Path, help="a run directory (its latest checkpoint), its checkpoints/ "
                                                      "folder, or one step-* checkpoint")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write it (default: CHECKPOINTS/universal/STEP, where a resume looks)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes for DeepSpeed's extraction and merge (default: CPUs, at most 8)")
    args = parser.parse_args(argv)
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        out = convert_to_universal(ckpt, args.out, args.workers)
    except CheckpointError as exc:
        print(f"elastic_resume: error: {exc}", file=sys.stderr)
        return 1
    state = read_run_state(out)
    print(f"{ckpt} (step {state['step']}, written by {state.get('world_size')} ranks) -> universal checkpoint {out}")
    if args.out is None:
        print("resume on any number of ranks with the same --run-dir and --resume auto (the default)")
    else:
        print(f"resume on any number of ranks with --resume {out}")
    return 0
