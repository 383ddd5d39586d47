"""Helpers shared by the test files: running the real trainer, reading its run directories, data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from llada_ds.model import ModelConfig

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "ds_configs" / "cpu.json"
# Subprocesses: one thread per rank, DeepSpeed on the CPU, nothing fetched from the Hugging Face Hub.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# A small model shape for adapter and export tests.
SMALL = ModelConfig(vocab_size=4096, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=96,
                    max_seq_len=64)


def torchrun(recipe: Path, run_dir: Path | str, *extra: str, nproc: int = 2, wait: bool = True,
             env: dict | None = None):
    """`torchrun -m llada_ds.train` with the CPU DeepSpeed config; asserts success when waited for.
    env: added to the environment (e.g. the loopback S3 server's)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llada_ds.train", "--recipe", str(recipe), "--run-dir", str(run_dir),
           "--deepspeed_config", str(CPU_CONFIG), *extra]
    full_env = {**ENV, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    res = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def step_losses(run_dir: Path) -> dict[int, float]:
    """The last recorded training loss of each step (a step re-run after recovery overwrites)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_rank_script(name: str, recipe: Path, tmp_path: Path) -> dict:
    """Run tests/scripts/NAME (one process, in-process Trainer) and return the JSON it prints last."""
    res = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / name), str(recipe), str(tmp_path)],
                         capture_output=True, text=True, env=ENV, timeout=250)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def dialogues(n: int = 40) -> list[dict]:
    """Seeded conversations of 1 to 3 exchanges ("What is a + b?" -> the sum, padded with words)."""
    rng = np.random.default_rng(0)
    out = []
    for d in range(n):
        turns = []
        for t in range(1 + d % 3):  # 1 to 3 exchanges
            a, b = rng.integers(0, 50, 2)
            turns += [{"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": f"{a + b}" + " indeed" * int(rng.integers(0, 6))}]
        out.append({"messages": turns})
    return out
