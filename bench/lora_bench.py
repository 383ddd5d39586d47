"""LoRA vs full SFT on CPU: peak memory and tokens/s of the same training, side by side, one run.

Same ~30M-parameter model as bench/train_bench.py, same SFT data (dialogues cut from the bundled
Shakespeare corpus, ~250 tokens each), same batches, noise and schedule; one training process
each (`python -m llada_ds.train`, DeepSpeed ZeRO-3 on one CPU rank, fp32, 2 threads):
- full SFT: every parameter trains (AdamW state for all of them);
- LoRA SFT: rank-16 adapters on all seven block matrices (`--lora.rank=16`), the base frozen.
The base of both is the same seeded model, written as a Hugging Face folder (train.init_from).
Peak memory is measured: the peak resident set size (ru_maxrss) of each training process, read by
a wrapper process that runs only it. Tokens/s is the training's own figure between the end of the
warm-up steps and the last step.

Usage: python bench/lora_bench.py [--steps 10] [--warmup 3] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llada_ds.config import load_run_config  # noqa: E402
from llada_ds.data.corpus import fetch_shakespeare  # noqa: E402
from llada_ds.data.sft import build_sft_cache  # noqa: E402
from llada_ds.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from llada_ds.hf.export import export_model  # noqa: E402
from llada_ds.lora import TARGETS, lora_parameter_count  # noqa: E402
from llada_ds.model import LLaDAModel  # noqa: E402
from llada_ds.model.sizing import count  # noqa: E402

MODEL = {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8, "ffn_hidden_size": 1408, "max_seq_len": 256}
# Runs one command and prints the peak RSS (KiB) of its largest descendant: the training process.
PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0 else -1)")


def dialogues(texts: list[Path], n: int) -> list[dict]:
    """Continuation dialogues: a line of a play as the prompt, the next ~700 characters as the answer."""
    out = []
    for f in texts:
        body = f.read_text()
        for start in range(0, len(body) - 900, 900):
            chunk = body[start:start + 900]
            out.append({"messages": [{"role": "user", "content": "Continue: " + chunk[:150]},
                                     {"role": "assistant", "content": chunk[150:]}]})
            if len(out) == n:
                return out
    return out


def run(recipe: Path, run_dir: Path, warmup: int, extra: list[str]) -> tuple[float, float]:
    """(tokens/s, peak RSS in MiB) of one training process."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-c", PEAK, sys.executable, "-m", "llada_ds.train", "--recipe", str(recipe),
           "--run-dir", str(run_dir), "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"), "--resume", "never",
           *extra]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    peak_kib = int(res.stdout.strip().splitlines()[-1])
    if peak_kib < 0:
        raise SystemExit(f"training failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    records = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    first, last = records[warmup - 1], records[-1]
    return (last["tokens_seen"] - first["tokens_seen"]) / (last["time"] - first["time"]), peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    texts = fetch_shakespeare(REPO / "data" / "shakespeare", REPO / ".cache")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_tokenizer((p.read_text() for p in texts), tmp / "tok", vocab_size=4096)
        convs = tmp / "convs.jsonl"
        convs.write_text("".join(json.dumps(d) + "\n" for d in dialogues(texts, 2000)))
        build_sft_cache([str(convs)], str(tmp / "tok"), str(tmp / "sft"), val_fraction=0.02)
        body = {
            "model": {"preset": "tiny", "overrides": MODEL},
            "data": {"train": str(tmp / "sft" / "train"), "tokenizer": str(tmp / "tok"), "seq_len": 256},
            "objective": {"kind": "sft"},
            "schedule": {"kind": "constant", "warmup_steps": 2},
            "optim": {"lr": 1e-3},
            "train": {"steps": args.steps, "global_batch": 16, "micro_batch": 4, "precision": "fp32",
                      "init_from": str(tmp / "base")},
            "eval": {"every": 0}, "checkpoint": {"every": 0}, "log": {"every": 100},
            "recovery": {"spike_factor": 0},
        }
        recipe = tmp / "bench.yaml"
        recipe.write_text(yaml.safe_dump(body))
        model_cfg = load_run_config(str(recipe)).model.build()
        torch.manual_seed(0)
        export_model(LLaDAModel(model_cfg), Tokenizer.load(str(tmp / "tok")), tmp / "base", dtype="fp32", verify=False)
        full = run(recipe, tmp / "full", args.warmup, [])
        lora = run(recipe, tmp / "lora", args.warmup, [f"--lora.rank={args.rank}", f"--lora.alpha={2 * args.rank}"])
    params = count(model_cfg).total
    adapters = lora_parameter_count(model_cfg, args.rank, TARGETS)
    print(f"model: {params:,} parameters; LoRA rank {args.rank} on all seven block matrices: {adapters:,} trainable "
          f"({100 * adapters / params:.2f}%)")
    print(f"SFT, global batch 16 x up to 256 tokens, 1 rank x 2 threads, fp32, DeepSpeed ZeRO-3, {args.steps} steps:")
    for name, (tps, peak) in (("full SFT", full), (f"LoRA SFT (rank {args.rank})", lora)):
        print(f"  {name:<22} {tps:8.0f} tok/s   peak RSS {peak:8.0f} MiB")
    print(f"  ratio LoRA / full: tokens/s {lora[0] / full[0]:.2f}, peak memory {lora[1] / full[1]:.2f} "
          f"({full[1] - lora[1]:.0f} MiB less)")


if __name__ == "__main__":
    main()
