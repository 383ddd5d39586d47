"""Where the time of a ZeRO-3 training step goes on CPU: py-spy samples of both ranks, by category.

Trains bench/train_bench.py's model and recipe (`llada-ds train --nproc 2`, the given DeepSpeed
config and overrides) under `py-spy record --idle --subprocesses` (wall-clock samples, waiting
included) and splits the samples taken inside `Trainer.train_step` by what they were doing:
parameter gathers, gradient reduce-scatter, DeepSpeed's other hook work, the optimizer step,
model forward / backward compute, the forward process (noise, masking) and data, the loss.

Usage: python bench/zero3_profile.py [--steps 8] [--deepspeed-config ds_configs/cpu.json]
       [--variant KEY=VALUE[,KEY=VALUE]] [--rate 100] [--set train.micro_batch=8 ...]
(--variant: changes to the config's zero_optimization section, as in bench/train_bench.py.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from train_bench import ds_variant, write_recipe  # noqa: E402

# Each sample is attributed to its innermost frame that one of these rules names (file part,
# function part or "" for any); wrappers and the collectives' own frames defer to their callers.
RULES = (
    ("deepspeed/utils/nvtx.py", "", None),  # a decorator: look further out
    ("torch/distributed/distributed_c10d.py", "reduce_scatter", "gradient reduce-scatter"),
    ("torch/distributed/distributed_c10d.py", "all_gather", "parameter all-gather"),
    ("torch/distributed/distributed_c10d.py", "", None),  # all_reduce, barrier: the caller decides
    ("deepspeed/runtime/zero/linear.py", "", "model compute (matmuls)"),
    ("llada_ds/model/head.py", "", "model compute (head + cross-entropy)"),
    ("llada_ds/model/", "", "model compute (other)"),
    ("deepspeed/runtime/zero/partitioned_param_coordinator.py", "", "parameter fetch / release (hooks)"),
    ("deepspeed/runtime/zero/partition_parameters.py", "", "parameter fetch / release (hooks)"),
    ("deepspeed/runtime/zero/parameter_offload.py", "", "parameter fetch / release (hooks)"),
    ("deepspeed/runtime/comm/coalesced_collectives.py", "", "gradient reduce-scatter"),
    ("deepspeed/runtime/zero/stage3.py", "reduce", "gradient reduce-scatter"),
    ("deepspeed/runtime/zero/stage3.py", "ipg", "gradient reduce-scatter"),
    ("deepspeed/runtime/zero/stage3.py", "partition_grads", "gradient reduce-scatter"),
    ("deepspeed/runtime/zero/stage3.py", "", "optimizer step (incl. gradient norm)"),
    ("torch/optim/", "", "optimizer step (incl. gradient norm)"),
    ("llada_ds/diffusion/", "", "forward process (noise, masking), loss figures"),
    ("llada_ds/data/", "", "data"),
    ("llada_ds/train/datasets.py", "", "data (read check: all-reduce, waits for the other rank)"),
    ("llada_ds/train/loop.py", "_agree", "step figures all-reduce (waits for the other rank)"),
    ("llada_ds/train/loop.py", "_outcome", "step figures to the host"),
    ("torch/autograd/", "", "model compute (autograd backward, non-matmul)"),
    ("deepspeed/runtime/engine.py", "", "DeepSpeed engine (other)"),
)


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first; py-spy writes "function (path:line)"
        func, _, where = frame.partition(" (")
        for path, name, category in RULES:
            if path in where and name in func:
                if category is None:
                    break  # this frame defers to its callers
                return category
    return "other (Python)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--deepspeed-config", default=str(REPO / "ds_configs" / "cpu.json"))
    parser.add_argument("--variant", default="", help="zero_optimization changes: key=value,key=value")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--set", nargs="*", default=[], help="run config overrides, e.g. train.micro_batch=8")
    parser.add_argument("--keep", default=None, help="also copy py-spy's raw output here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = write_recipe(tmp, args.steps)
        raw = tmp / "profile.txt"
        ds_config = ds_variant(args.deepspeed_config, args.variant, tmp / "ds.json") if args.variant \
            else args.deepspeed_config
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--idle", "--subprocesses", "--format", "raw",
               "--rate", str(args.rate), "-o", str(raw), "--", sys.executable, "-m", "llada_ds.cli", "train",
               "--nproc", "2", "--recipe", str(recipe), "--run-dir", str(tmp / "run"),
               "--deepspeed_config", ds_config, "--resume", "never", *(f"--{s}" for s in args.set)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        if args.keep:
            Path(args.keep).write_text(raw.read_text())
        samples: Counter = Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            if not any("train_step" in f for f in frames):
                continue  # start-up, checkpoints, the launcher
            # py-spy's raw frames look like "function (path/file.py:line)".
            samples[categorise(frames)] += int(n)
    total = sum(samples.values())
    print(f"ZeRO-3 on 2 gloo ranks, {args.steps} steps, config {args.deepspeed_config}"
          + (f" + {args.variant}" if args.variant else "") + (f", {' '.join(args.set)}" if args.set else "") + f": {total} samples inside train_step (both ranks)")
    for name, n in samples.most_common():
        print(f"  {name:<45} {100 * n / total:5.1f}%")


if __name__ == "__main__":
    main()
