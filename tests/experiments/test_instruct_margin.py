"""Instruction tuning end to end, CI-sized: SFT raises the tiny model's held-out exact match.

The whole user path on one CPU rank: `generate_task` (examples/instruct_task.py, easy `copy` family) ->
`build_sft_cache` (what `llada-ds sft-data` runs) -> `llada-ds train --nproc 1` (torchrun, the real
trainer with DeepSpeed ZeRO-3 and the SFT objective) -> exact match of the sampler's answers on
held-out instructions (what `llada-ds eval --instruction-test` runs), before and after training.
"Before" is the trainer's own starting point: a run stopped after 0 steps saves it, and the same
run is then resumed, so both figures come from checkpoints the trainer wrote.

Everything is seeded (task, split, data order, noise, initialisation, sampler at temperature 0)
and the training ranks run on one thread, so the figures are the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from examples.instruct_task import generate_task

from llada_ds.cli import main as llada_ds
from llada_ds.data.sft import build_sft_cache
from llada_ds.diffusion.sampler import SamplerConfig
from llada_ds.evaluation import instruction_exact_match
from llada_ds.inference import load_for_inference

REPO = Path(__file__).resolve().parents[2]
STEPS = 200  # the copy family is solved (held-out exact match 1.00) by step 200; 0.71 at 120
MARGIN = 0.6  # measured: 0.00 -> 1.00 (0.71 at step 120); a clear margin with room for slower learning
GEN_LENGTH = 8  # the longest answer, "d d d d" + end-of-turn, is 8 tokens


def sft_recipe(root: Path, tokenizer: Path) -> Path:
    """The sft-tiny recipe's settings, from scratch, on the task's cache; sequences of 64."""
    body = {
        # The tiny preset's architecture; only the training length is shorter (pairs are ~35 tokens).
        "model": {"preset": "tiny", "overrides": {"max_seq_len": 64}},
        "data": {"train": str(root / "sft" / "train"), "validation": str(root / "sft" / "validation"),
                 "tokenizer": str(tokenizer), "seq_len": 64},
        "objective": {"kind": "sft"},
        "optim": {"lr": 1e-3, "weight_decay": 0.0, "grad_clip": 1.0},
        "schedule": {"kind": "constant", "warmup_steps": 10},
        # One micro-batch per step: the fastest way through the steps on one CPU rank.
        "train": {"steps": STEPS, "global_batch": 16, "micro_batch": 16, "precision": "fp32"},
        "eval": {"every": 0, "samples": 32},
        "checkpoint": {"every": 0, "keep_last": 2},
        # SFT losses reach ~1e-3 and the 1/t weight makes single batches jump 10x and more: spike
        # detection would skip healthy steps here. This test is about learning, not recovery.
        "recovery": {"spike_factor": 0},
        "log": {"every": 20},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def held_out_exact_match(model_path: Path, tokenizer: Path, test_file: Path) -> float:
    loaded = load_for_inference(str(model_path), str(tokenizer), "cpu", "fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order as the training rank: same figures every run
    try:
        cfg = SamplerConfig(gen_length=GEN_LENGTH, steps=GEN_LENGTH, block_length=GEN_LENGTH)
        return instruction_exact_match(loaded.model, loaded.tokenizer, test_file, cfg, batch=50)["exact_match"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.timeout(400)
def test_sft_raises_held_out_exact_match_of_the_tiny_model(sp_tokenizer, tmp_path, monkeypatch):
    counts = generate_task(tmp_path / "task", n_train=900, n_test=100, seed=0, tasks=("copy",))
    assert counts == {"train": 900, "test": 100}  # disjoint prompts (tested in test_sft.py)
    build_sft_cache([str(tmp_path / "task" / "train.jsonl")], str(sp_tokenizer), str(tmp_path / "sft"),
                    val_fraction=0.05, split_seed=0)
    recipe, run = sft_recipe(tmp_path, sp_tokenizer), tmp_path / "run"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    train = ["train", "--nproc", "1", "--recipe", str(recipe), "--run-dir", str(run),
             "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json")]

    assert llada_ds(train + ["--stop-after", "0"]) == 0  # saves the starting weights as step 0
    before = held_out_exact_match(run / "checkpoints" / "step-00000000", sp_tokenizer, tmp_path / "task" / "test.jsonl")
    assert llada_ds(train) == 0  # resumes the same run from step 0 and trains to STEPS
    assert (run / "checkpoints" / f"step-{STEPS:08d}").is_dir()
    after = held_out_exact_match(run, sp_tokenizer, tmp_path / "task" / "test.jsonl")
    print(f"held-out exact match {before:.2f} -> {after:.2f} after {STEPS} SFT steps")
    assert after - before >= MARGIN, (before, after)
