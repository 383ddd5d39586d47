"""Training throughput: llada-ds under DeepSpeed ZeRO-3 on 2 CPU ranks vs a plain PyTorch loop.

Same ~30M-parameter model, data, noise and batch (global 16 x 256 tokens, micro batch 4), in one
run: the plain single-process loop uses 2 threads; llada-ds uses 2 gloo ranks of 1 thread each
(`llada-ds train --nproc 2`). Prints tokens/s, TFLOP/s and MFU against this machine's best
measured fp32 matmul rate (2 threads, `monitor.measured_peak`), and the ratio llada-ds / plain.

--variant runs llada-ds again with changes to the DeepSpeed config's zero_optimization section
(`key=value,key=value`, e.g. `stage3_param_persistence_threshold=1e6`), each side by side with the
others and the plain loop; --repeat N runs the whole set N times in turn (the machine's load
varies: compare the ratios of one round).

Usage: python bench/train_bench.py [--steps 12] [--warmup 3] [--micro-batch 4] [--deepspeed-config PATH]
       [--variant KEY=VALUE[,KEY=VALUE] ...] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llada_ds.config import load_run_config  # noqa: E402
from llada_ds.data.build import BuildConfig, build_shards, resolve_inputs  # noqa: E402
from llada_ds.data.corpus import fetch_shakespeare  # noqa: E402
from llada_ds.data.loader import DistributedBatches, WindowDataset  # noqa: E402
from llada_ds.data.shards import ShardSet  # noqa: E402
from llada_ds.data.storage import LocalStorage  # noqa: E402
from llada_ds.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from llada_ds.diffusion import NoiseConfig, PretrainObjective  # noqa: E402
from llada_ds.model import LLaDAModel  # noqa: E402
from llada_ds.model.sizing import count, train_flops_per_token  # noqa: E402
from llada_ds.train.monitor import measured_peak  # noqa: E402
from llada_ds.train.optim import adamw  # noqa: E402
from llada_ds.train.plain import train_plain  # noqa: E402
from llada_ds.train.schedule import learning_rate  # noqa: E402

MODEL = {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8, "ffn_hidden_size": 1408, "max_seq_len": 256}


def plain_loop(recipe: Path, steps: int, warmup: int) -> float:
    """Tokens/s of the same training in the plain single-process loop (llada_ds/train/plain.py)."""
    cfg = load_run_config(str(recipe))
    tok = Tokenizer.load(cfg.data.tokenizer)
    torch.manual_seed(0)
    model = LLaDAModel(cfg.model.build())
    opt = adamw(model, cfg.optim)
    batches = DistributedBatches(WindowDataset(ShardSet(LocalStorage(cfg.data.train)), cfg.data.seq_len, 0),
                                 cfg.train.global_batch, cfg.train.micro_batch)
    objective = PretrainObjective(tok.special.mask, noise=NoiseConfig(random_length_prob=0.0))

    def lr_at(step: int) -> float:
        return learning_rate(step, cfg.train.steps, cfg.optim.lr, cfg.schedule)

    train_plain(model, objective, batches.step, warmup, opt, lr_at, cfg.optim.grad_clip)
    start = time.perf_counter()
    train_plain(model, objective, batches.step, steps - warmup, opt, lr_at, cfg.optim.grad_clip, start=warmup)
    tokens = (steps - warmup) * cfg.train.global_batch * cfg.data.seq_len  # no random-length cut
    return tokens / (time.perf_counter() - start)


def llada_ds_run(recipe: Path, run_dir: Path, steps: int, warmup: int, ds_config: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "llada_ds.cli", "train", "--nproc", "2", "--recipe", str(recipe),
           "--run-dir", str(run_dir), "--deepspeed_config", ds_config, "--resume", "never"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    # Throughput between the end of the warm-up steps and the last step (wall clock of rank 0).
    first, last = records[warmup - 1], records[-1]
    tokens = last["tokens_seen"] - first["tokens_seen"]  # all ranks' tokens of steps warmup..last
    return tokens / (last["time"] - first["time"])


def write_recipe(tmp: Path, steps: int, micro_batch: int = 4) -> Path:
    """Tokenizer, shards and the benchmark's recipe under tmp (also used by bench/zero3_profile.py)."""
    files = resolve_inputs([str(f) for f in fetch_shakespeare(REPO / "data" / "shakespeare", REPO / ".cache")])
    train_tokenizer((Path(f).read_text() for f in files), tmp / "tok", vocab_size=4096)
    build_shards(BuildConfig(inputs=files, out_dir=str(tmp / "shards"), tokenizer=str(tmp / "tok"),
                             val_fraction=0.05), progress_bar=False)
    body = {
        "model": {"preset": "tiny", "overrides": MODEL},
        "data": {"train": str(tmp / "shards" / "train"), "tokenizer": str(tmp / "tok"), "seq_len": 256},
        "objective": {"random_length_prob": 0.0},
        "schedule": {"kind": "constant", "warmup_steps": 2},
        "optim": {"lr": 1e-3},
        "train": {"steps": steps, "global_batch": 16, "micro_batch": micro_batch, "precision": "fp32"},
        "eval": {"every": 0}, "checkpoint": {"every": 0}, "log": {"every": 100},
    }
    recipe = tmp / "bench.yaml"
    recipe.write_text(yaml.safe_dump(body))
    return recipe


def _value(text: str):
    """A config value from the command line: true/false, a number (1e6 is the integer 1000000), or text."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def ds_variant(base: str, changes: str, out: Path) -> str:
    """The DeepSpeed config `base` with `changes` (key=value,... of zero_optimization) written to out."""
    body = json.loads(Path(base).read_text())
    for item in filter(None, changes.split(",")):
        key, _, value = item.partition("=")
        body["zero_optimization"][key.strip()] = _value(value)
    out.write_text(json.dumps(body, indent=2))
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=4, help="both loops (global batch 16)")
    parser.add_argument("--deepspeed-config", default=str(REPO / "ds_configs" / "cpu.json"))
    parser.add_argument("--variant", nargs="*", default=[], help="zero_optimization changes, one run each")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = write_recipe(tmp, args.steps, args.micro_batch)
        cfg = load_run_config(str(recipe))
        model_cfg = cfg.model.build()
        params = count(model_cfg)
        fpt = train_flops_per_token(model_cfg, 256, params)
        configs = [("llada-ds ZeRO-3 " + Path(args.deepspeed_config).name, args.deepspeed_config)]
        configs += [(f"  + {v}", ds_variant(args.deepspeed_config, v, tmp / f"variant{i}.json"))
                    for i, v in enumerate(args.variant)]
        peak, source = measured_peak(torch.device("cpu"), torch.float32)
        for r in range(args.repeat):
            plain = plain_loop(recipe, args.steps, args.warmup)
            ours = [llada_ds_run(recipe, tmp / f"run{r}-{i}", args.steps, args.warmup, path)
                    for i, (_, path) in enumerate(configs)]
            rounds.append((plain, ours))
    print(f"model: {params.total:,} parameters; {fpt / 1e6:.1f} MFLOP per token (6N + attention, bidirectional); "
          f"global batch 16 x 256, micro batch {args.micro_batch}; llada-ds: 2 ranks x 1 thread, plain: 1 process "
          "x 2 threads")
    print(f"machine: {os.cpu_count()} CPUs, fp32 matmul peak {peak:.3f} TFLOP/s with 2 threads ({source}); "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    for r, (plain, ours) in enumerate(rounds):
        print(f" round {r + 1}:")
        for name, tps in [("plain PyTorch", plain)] + [(n, t) for (n, _), t in zip(configs, ours)]:
            tflops = tps * fpt / 1e12
            print(f"  {name:<70} {tps:7.0f} tok/s  {tflops:6.3f} TFLOP/s  MFU {100 * tflops / peak:5.1f}%  "
                  f"{tps / plain:5.2f}x plain")


if __name__ == "__main__":
    main()
