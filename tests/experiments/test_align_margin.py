"""Alignment end to end, CI-sized: GRPO and VRPO each raise the held-out exact match of an SFT model.

The user path on one CPU rank: the bundled task's easy `copy` family (examples/instruct_task.py),
an SFT run from scratch stopped while the model is still weak (what test_instruct_margin.py runs,
for fewer steps), then, from its weights (train.init_from, also the frozen reference):
- GRPO with the built-in exact-match reward on the training instructions (llada-ds prompt-data);
- VRPO on preference pairs whose chosen answer is the correct one and whose rejected answer is
  the SFT model's own wrong answer (examples/align_task.py, llada-ds pref-data).
Held-out exact match with the sampler (what `llada-ds eval --instruction-test` runs) before and
after each. Everything is seeded and the ranks run on one thread: the figures repeat exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from examples.align_task import preference_pairs, task_examples, write_jsonl
from examples.instruct_task import generate_task
from test_instruct_margin import REPO, held_out_exact_match, sft_recipe

from llada_ds.cli import main as llada_ds
from llada_ds.data.preference import build_preference_cache
from llada_ds.data.prompts import build_prompt_cache
from llada_ds.data.sft import build_sft_cache
from llada_ds.inference import load_for_inference

SFT_STEPS = 100  # held-out exact match 0.26: the model copies some instructions, far from all
GRPO_MARGIN = 0.1  # measured: 0.26 -> 0.47 after 10 GRPO steps
VRPO_MARGIN = 0.08  # measured: 0.26 -> 0.44 after 20 VRPO steps


def train(recipe: Path, run: Path) -> None:
    assert llada_ds(["train", "--nproc", "1", "--recipe", str(recipe), "--run-dir", str(run),
                     "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json")]) == 0


def alignment_recipe(root: Path, name: str, tokenizer: Path, body: dict) -> Path:
    common = {
        "model": {"preset": "tiny", "overrides": {"max_seq_len": 64}},
        "schedule": {"kind": "constant", "warmup_steps": 0},
        "eval": {"every": 0, "samples": 32},
        "checkpoint": {"every": 0, "keep_last": 1},
        "recovery": {"spike_factor": 0},  # DPO and GRPO losses hover near or below zero
        "log": {"every": 5},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**common, **body}))
    return path


@pytest.fixture(scope="module")
def sft(sp_tokenizer, tmp_path_factory):
    """(root, SFT run, held-out exact match of the SFT model)."""
    root = tmp_path_factory.mktemp("align_margin")
    generate_task(root / "task", n_train=900, n_test=100, seed=0, tasks=("copy",))
    build_sft_cache([str(root / "task" / "train.jsonl")], str(sp_tokenizer), str(root / "sft"), val_fraction=0.05)
    recipe = sft_recipe(root, sp_tokenizer)
    body = yaml.safe_load(recipe.read_text())
    body["train"]["steps"] = SFT_STEPS
    recipe.write_text(yaml.safe_dump(body))
    train(recipe, root / "sft-run")
    return root, root / "sft-run", held_out_exact_match(root / "sft-run", sp_tokenizer, root / "task" / "test.jsonl")


@pytest.mark.timeout(900)
def test_grpo_raises_held_out_exact_match_of_an_sft_model(sft, sp_tokenizer, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, sft_run, before = sft
    write_jsonl(task_examples(root / "task" / "train.jsonl"), root / "prompts.jsonl")
    build_prompt_cache([str(root / "prompts.jsonl")], str(sp_tokenizer), str(root / "prompts"))
    recipe = alignment_recipe(root, "grpo", sp_tokenizer, {
        "data": {"train": str(root / "prompts" / "train"), "tokenizer": str(sp_tokenizer), "seq_len": 64},
        "objective": {"kind": "grpo"},
        "grpo": {"generations": 8, "updates": 1, "clip": 0.2, "beta": 0.04, "gen_length": 8, "steps": 8,
                 "block_length": 8, "temperature": 1.0},
        "optim": {"lr": 2e-4, "weight_decay": 0.0, "grad_clip": 1.0},
        "train": {"steps": 10, "global_batch": 32, "micro_batch": 32, "precision": "fp32", "init_from": str(sft_run)}})
    train(recipe, root / "grpo-run")
    after = held_out_exact_match(root / "grpo-run", sp_tokenizer, root / "task" / "test.jsonl")
    print(f"held-out exact match {before:.2f} (SFT) -> {after:.2f} after 10 GRPO steps")
    assert after - before >= GRPO_MARGIN, (before, after)


@pytest.mark.timeout(900)
def test_vrpo_raises_held_out_exact_match_of_an_sft_model(sft, sp_tokenizer, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, sft_run, before = sft
    loaded = load_for_inference(str(sft_run), str(sp_tokenizer), "cpu", "fp32")
    pairs = preference_pairs(loaded.model, loaded.tokenizer, task_examples(root / "task" / "train.jsonl"), 8)
    assert 300 < len(pairs) < 900  # the model's own wrong answers to the training instructions
    write_jsonl(pairs, root / "pairs.jsonl")
    build_preference_cache([str(root / "pairs.jsonl")], str(sp_tokenizer), str(root / "pref"), val_fraction=0.05)
    recipe = alignment_recipe(root, "vrpo", sp_tokenizer, {
        "data": {"train": str(root / "pref" / "train"), "tokenizer": str(sp_tokenizer), "seq_len": 64},
        "objective": {"kind": "vrpo"},
        "vrpo": {"beta": 0.5, "mc_samples": 2},
        "optim": {"lr": 5e-5, "weight_decay": 0.0, "grad_clip": 1.0},
        "train": {"steps": 20, "global_batch": 16, "micro_batch": 16, "precision": "fp32", "init_from": str(sft_run)}})
    train(recipe, root / "vrpo-run")
    after = held_out_exact_match(root / "vrpo-run", sp_tokenizer, root / "task" / "test.jsonl")
    print(f"held-out exact match {before:.2f} (SFT) -> {after:.2f} after 20 VRPO steps")
    assert after - before >= VRPO_MARGIN, (before, after)
