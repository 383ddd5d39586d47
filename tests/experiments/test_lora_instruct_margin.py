"""LoRA instruction tuning end to end, CI-sized: LoRA SFT raises the tiny model's held-out exact match.

The path of tests/experiments/test_instruct_margin.py (bundled task, easy `copy` family ->
`build_sft_cache` -> `llada-ds train --nproc 1`, the real trainer with ZeRO-3 and the SFT objective
-> exact match of the sampler's answers on held-out instructions), with LoRA adapters of rank 16 on
all seven block matrices of a frozen base: the tiny preset's seeded initial weights, written as a
Hugging Face folder in LLaDA's layout (the usual `--train.init_from=FOLDER`). "Before" is the
trainer's own step-0 checkpoint (adapters at their start, B = 0: the base), "after" the run itself:
`load_for_inference` reads base + adapters, as `llada-ds eval` does.

Everything is seeded and the training rank runs on one thread, so the figures repeat.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.instruct_task import generate_task
from tests.experiments.test_instruct_margin import GEN_LENGTH, held_out_exact_match, sft_recipe

from llada_ds.cli import main as llada_ds
from llada_ds.data.sft import build_sft_cache
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.hf.export import export_model
from llada_ds.model import LLaDAModel, get_preset

REPO = Path(__file__).resolve().parents[2]
STEPS = 200
MARGIN = 0.5
LORA = ["--lora.rank=16", "--lora.alpha=32", "--lora.targets=all-linear", "--optim.lr=5e-3"]


@pytest.mark.timeout(500)
def test_lora_sft_raises_held_out_exact_match_of_the_tiny_model(sp_tokenizer, tmp_path, monkeypatch):
    generate_task(tmp_path / "task", n_train=900, n_test=100, seed=0, tasks=("copy",))
    build_sft_cache([str(tmp_path / "task" / "train.jsonl")], str(sp_tokenizer), str(tmp_path / "sft"),
                    val_fraction=0.05, split_seed=0)
    torch.manual_seed(0)
    base = tmp_path / "base"
    export_model(LLaDAModel(get_preset("tiny").replace(max_seq_len=64)), Tokenizer.load(str(sp_tokenizer)), base,
                 dtype="fp32", verify=False)
    recipe, run = sft_recipe(tmp_path, sp_tokenizer), tmp_path / "run"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    train = ["train", "--nproc", "1", "--recipe", str(recipe), "--run-dir", str(run),
             "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"), f"--train.init_from={base}", *LORA,
             f"--train.steps={STEPS}"]

    assert llada_ds(train + ["--stop-after", "0"]) == 0  # saves the starting adapters as step 0
    test = tmp_path / "task" / "test.jsonl"
    before = held_out_exact_match(run / "checkpoints" / "step-00000000", sp_tokenizer, test)
    assert llada_ds(train) == 0
    after = held_out_exact_match(run, sp_tokenizer, test)
    print(f"held-out exact match {before:.2f} -> {after:.2f} after {STEPS} LoRA SFT steps (gen length {GEN_LENGTH})")
    assert after - before >= MARGIN, (before, after)
