"""LoRA instruction tuning end to end, CI-sized: LoRA SFT raises the tiny model's held-out exact match.

The path of tests/experiments/test_instruct_margin.py (bundled task, easy `copy` family ->
`build_sft_cache` -> `llada-ds train --nproc 1`, the real trainer with ZeRO-3 and the SFT objective
-> exact match of the sampler's answers on held-out instructions), with LoRA adapters of rank 32 on
all seven block matrices of a frozen base, written as a Hugging Face folder in LLaDA's layout (the
usual `--train.init_from=FOLDER`). "Before" is the trainer's own step-0 checkpoint (adapters at
their start, B = 0: the base), "after" the run itself: `load_for_inference` reads base + adapters,
as `llada-ds eval` does.

The base is a weak model of the task, not a random one: the tiny model after BASE_STEPS steps of
full SFT in the plain loop (held-out exact match 0.07). On a randomly initialised base, whose
embedding and output head stay frozen and random, LoRA did not learn the task in 200 steps
(0.00 -> 0.00 at rank 16, learning rates 5e-3 and 1e-2, measured).

Everything is seeded and the training rank runs on one thread, so the figures repeat.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.instruct_task import generate_task
from tests.experiments.test_instruct_margin import GEN_LENGTH, held_out_exact_match, sft_recipe

from llada_ds.cli import main as llada_ds
from llada_ds.data.sft import SFTBatches, SFTData, build_sft_cache
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.diffusion import NoiseConfig, SFTObjective
from llada_ds.hf.export import export_model
from llada_ds.model import LLaDAModel, get_preset
from llada_ds.train.plain import train_plain

REPO = Path(__file__).resolve().parents[2]
STEPS = 200
BASE_STEPS = 80
MARGIN = 0.6  # measured: 0.07 -> 0.96; a clear margin with room for slower learning
LORA = ["--lora.rank=32", "--lora.alpha=64", "--lora.targets=all-linear", "--optim.lr=3e-3"]


def weak_base(sft: Path, tokenizer: Path, out: Path) -> None:
    """The tiny model after BASE_STEPS steps of full SFT (plain loop, one thread), as a folder."""
    tok = Tokenizer.load(str(tokenizer))
    torch.manual_seed(0)
    model = LLaDAModel(get_preset("tiny").replace(max_seq_len=64))
    batches = SFTBatches(SFTData(str(sft / "train"), tok.fingerprint), 16, 16, 0, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_plain(model, SFTObjective(tok.special.mask, noise=NoiseConfig()), batches.step, BASE_STEPS,
                    torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0), lambda step: 1e-3)
    finally:
        torch.set_num_threads(threads)
    export_model(model, tok, out, dtype="fp32", verify=False)


@pytest.mark.timeout(500)
def test_lora_sft_raises_held_out_exact_match_of_the_tiny_model(sp_tokenizer, tmp_path, monkeypatch):
    generate_task(tmp_path / "task", n_train=900, n_test=100, seed=0, tasks=("copy",))
    build_sft_cache([str(tmp_path / "task" / "train.jsonl")], str(sp_tokenizer), str(tmp_path / "sft"),
                    val_fraction=0.05, split_seed=0)
    base = tmp_path / "base"
    weak_base(tmp_path / "sft", sp_tokenizer, base)
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
