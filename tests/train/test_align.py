"""VRPO and GRPO in the real trainer: 2 ZeRO-3 ranks (torchrun, gloo) against the plain single-process
loop, rollouts across world sizes, and a stop/resume that reproduces rollouts and losses bitwise.

The reference model is the frozen copy (train/alignment.py: a second ZeRO-3 engine without an
optimizer) on the ranks, a deep copy in the plain loop; both start from the same weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from examples.align_task import task_examples, write_jsonl
from examples.instruct_task import generate_task
from helpers import metrics, step_losses, torchrun, weights_checkpoint

from llada_ds.config import load_run_config
from llada_ds.data.preference import PreferenceBatches, PreferenceData, build_preference_cache
from llada_ds.data.prompts import PromptBatches, PromptData, build_prompt_cache
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.diffusion.grpo import GRPOObjective, GRPOSettings
from llada_ds.diffusion.masking import NoiseConfig
from llada_ds.diffusion.preference import VRPOObjective
from llada_ds.diffusion.reference import AdaptersDisabled, FrozenReference
from llada_ds.diffusion.sampler import SamplerConfig
from llada_ds.lora import adapters_disabled, inject_lora
from llada_ds.model import LLaDAModel
from llada_ds.rewards import exact_match
from llada_ds.train.optim import adamw
from llada_ds.train.plain import train_plain
from llada_ds.train.schedule import learning_rate
from llada_ds.weights import IMPORTED_WEIGHTS

SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden_size": 128, "max_seq_len": 64}


@pytest.fixture(scope="module")
def align(sp_tokenizer, tmp_path_factory):
    """The copy task's prompts and synthetic preference pairs (rejected: the answer reversed), a
    seeded small model as the starting (and reference) weights, and the two recipes."""
    root = tmp_path_factory.mktemp("align")
    generate_task(root / "task", n_train=48, n_test=4, seed=0, tasks=("copy",))
    examples = task_examples(root / "task" / "train.jsonl")
    write_jsonl(examples, root / "prompts.jsonl")
    write_jsonl([{"prompt": e["prompt"], "chosen": e["answer"], "rejected": " ".join(e["answer"].split()[::-1] + ["0"])}
                 for e in examples], root / "pairs.jsonl")
    build_prompt_cache([str(root / "prompts.jsonl")], str(sp_tokenizer), str(root / "prompts"))
    build_preference_cache([str(root / "pairs.jsonl")], str(sp_tokenizer), str(root / "pref"), val_fraction=0.2)
    common = {
        "model": {"preset": "tiny", "overrides": SMALL},
        "optim": {"lr": 2e-3, "weight_decay": 0.01, "grad_clip": 0.5},
        "schedule": {"kind": "wsd", "warmup_steps": 1, "decay_steps": 2, "final_lr": 5e-4},
        "checkpoint": {"every": 2, "keep_last": 3},
        "recovery": {"spike_factor": 0},
        "log": {"every": 1},
    }
    vrpo = {**common,
            "data": {"train": str(root / "pref" / "train"), "validation": str(root / "pref" / "validation"),
                     "tokenizer": str(sp_tokenizer), "seq_len": 64},
            "objective": {"kind": "vrpo"}, "vrpo": {"beta": 0.5, "mc_samples": 2},
            "train": {"steps": 4, "global_batch": 8, "micro_batch": 2, "precision": "fp32",
                      "init_from": str(root / "init")},
            "eval": {"every": 2, "samples": 8}}
    grpo = {**common,
            "data": {"train": str(root / "prompts" / "train"), "tokenizer": str(sp_tokenizer), "seq_len": 64},
            "objective": {"kind": "grpo"},
            "grpo": {"generations": 4, "updates": 2, "clip": 0.2, "beta": 0.05, "gen_length": 8, "steps": 8,
                     "block_length": 4, "temperature": 1.0, "log_samples": 100},
            "train": {"steps": 3, "global_batch": 16, "micro_batch": 4, "precision": "fp32",
                      "init_from": str(root / "init")},
            "eval": {"every": 0}}
    recipes = {}
    for name, body in (("vrpo", vrpo), ("grpo", grpo)):
        recipes[name] = root / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(body))
    cfg = load_run_config(str(recipes["vrpo"]))
    torch.manual_seed(11)
    weights_checkpoint(LLaDAModel(cfg.model.build()), Path(sp_tokenizer), root / "init")
    return recipes


def starting_model(recipe: Path) -> tuple[LLaDAModel, FrozenReference, object]:
    """The run's starting weights as a plain model, its frozen copy, and the run config."""
    from safetensors.torch import load_file

    cfg = load_run_config(str(recipe))
    model = LLaDAModel(cfg.model.build())
    model.load_state_dict(load_file(str(Path(cfg.train.init_from) / IMPORTED_WEIGHTS)))
    return model, FrozenReference(copy.deepcopy(model)), cfg


def plain(model, objective, batches, cfg, on_prepared=None) -> list[float]:
    return train_plain(model, objective, batches, cfg.train.steps, adamw(model, cfg.optim),
                       lambda s: learning_rate(s, cfg.train.steps, cfg.optim.lr, cfg.schedule), cfg.optim.grad_clip,
                       on_prepared=on_prepared)


@pytest.mark.timeout(600)
def test_vrpo_on_two_zero3_ranks_matches_the_plain_loop(align, tmp_path):
    run = tmp_path / "run"
    # Step 3 is made non-finite once: skipped, then the run reloads the step-2 checkpoint (at an
    # unchanged learning rate) and computes step 3 again, as if nothing had happened.
    res = torchrun(align["vrpo"], run, "--faults.nonfinite_steps=[3]", "--recovery.max_bad_steps=1",
                   "--recovery.lr_factor=1.0")
    assert "recovery 1: reloaded step-00000002" in res.stdout
    model, reference, cfg = starting_model(align["vrpo"])
    tok = Tokenizer.load(cfg.data.tokenizer)
    objective = VRPOObjective(tok.special.mask, cfg.model.build().vocab_size, NoiseConfig(), reference,
                              cfg.vrpo.beta, cfg.vrpo.mc_samples)
    batches = PreferenceBatches(PreferenceData(cfg.data.train), cfg.train.global_batch, cfg.train.micro_batch,
                                cfg.data.seed, cfg.data.seq_len)
    want = plain(model, objective, batches.step, cfg)
    got = step_losses(run)  # metrics.jsonl counts steps from 1, the plain loop's list from 0
    assert sorted(got) == list(range(1, cfg.train.steps + 1))
    for step in range(cfg.train.steps):
        assert got[step + 1] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got[step + 1], want[step])
    assert want[-1] < want[0]
    records = [r for r in metrics(run) if "loss" in r]
    assert {"pref_accuracy", "pref_margin", "chosen_reward", "rejected_reward"} <= set(records[-1])
    assert records[0]["pref_margin"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert records[-1]["pref_accuracy"] > 0.5
    assert any("val_loss" in r for r in metrics(run)) and "validation loss" in res.stdout


@pytest.fixture(scope="module")
def grpo_run(align, tmp_path_factory):
    run = tmp_path_factory.mktemp("grpo") / "run"
    torchrun(align["grpo"], run)
    return run


def rollouts(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_grpo_on_two_zero3_ranks_matches_the_plain_loop_and_its_rollouts(align, grpo_run):
    model, reference, cfg = starting_model(align["grpo"])
    tok = Tokenizer.load(cfg.data.tokenizer)
    g = cfg.grpo
    objective = GRPOObjective(tok.special.mask, cfg.model.build().vocab_size, NoiseConfig(), tok, exact_match,
                              GRPOSettings(g.generations, g.updates, g.clip, g.beta, g.prompt_mask_prob, g.loss,
                                           g.scale_rewards, g.log_samples),
                              SamplerConfig(gen_length=g.gen_length, steps=g.steps, block_length=g.block_length,
                                            temperature=g.temperature, remasking=g.remasking),
                              cfg.train.micro_batch, reference)
    batches = PromptBatches(PromptData(cfg.data.train), cfg.train.global_batch, cfg.train.micro_batch, g.generations,
                            cfg.data.seed, cfg.data.seq_len, g.gen_length)
    prepared = {}
    want = plain(model, objective, batches.step, cfg, on_prepared=lambda s, p: prepared.setdefault(s, p))
    got = step_losses(grpo_run)  # metrics.jsonl and rollouts.jsonl count steps from 1
    assert sorted(got) == list(range(1, cfg.train.steps + 1))
    for step in range(cfg.train.steps):
        assert got[step + 1] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got[step + 1], want[step])
    # Rank 0 of 2 samples the first half of each step's prompts: the very completions the single
    # process sampled for them.
    per_step = cfg.train.global_batch // 2
    ranked = rollouts(grpo_run)
    assert len(ranked) == cfg.train.steps * per_step
    for step in range(cfg.train.steps):
        mine = [r for r in ranked if r["step"] == step + 1]
        assert [(r["prompt_index"], r["completion"], r["reward"]) for r in mine] == \
            [(r["prompt_index"], r["completion"], r["reward"]) for r in prepared[step].samples[:per_step]]
    records = {r["step"]: r for r in metrics(grpo_run) if "loss" in r}
    for step, p in prepared.items():
        total, count = p.figures.extra["reward"].tolist()
        assert records[step + 1]["reward"] == pytest.approx(total / count)
        for key in ("reward_std", "kl", "clip_fraction", "completion_length", "advantage_abs"):
            assert key in records[step + 1]
    assert any(r["reward"] > 0 for r in ranked) or all(r["advantage"] == 0 for r in ranked)


@pytest.mark.timeout(600)
def test_grpo_stop_and_resume_reproduce_rollouts_and_losses_bitwise(align, grpo_run, tmp_path):
    run = tmp_path / "parts"
    torchrun(align["grpo"], run, "--stop-after", "2")
    torchrun(align["grpo"], run, "--resume", "auto")
    assert step_losses(run) == step_losses(grpo_run)
    assert rollouts(run) == rollouts(grpo_run)


@pytest.mark.timeout(600)
def test_lora_vrpo_on_two_zero3_ranks_has_the_adapter_free_policy_as_reference(align, tmp_path):
    """With LoRA the reference is the policy with its adapters disabled (no second model): 2 ZeRO-3
    ranks against the plain loop on the same adapted model with AdaptersDisabled."""
    run = tmp_path / "run"
    lora = ["--lora.rank=4", "--lora.alpha=8", "--lora.targets=[q_proj,v_proj,ff_out]", "--optim.lr=1e-2"]
    res = torchrun(align["vrpo"], run, *lora)
    assert "trainable: LoRA adapters" in res.stdout
    cfg = load_run_config(str(align["vrpo"]), lora)
    model, _, _ = starting_model(align["vrpo"])
    inject_lora(model, cfg.lora.spec(), cfg.train.seed)  # what the engine does, with the same seed
    tok = Tokenizer.load(cfg.data.tokenizer)
    objective = VRPOObjective(tok.special.mask, cfg.model.build().vocab_size, NoiseConfig(),
                              AdaptersDisabled(model, adapters_disabled), cfg.vrpo.beta, cfg.vrpo.mc_samples)
    batches = PreferenceBatches(PreferenceData(cfg.data.train), cfg.train.global_batch, cfg.train.micro_batch,
                                cfg.data.seed, cfg.data.seq_len)
    want = plain(model, objective, batches.step, cfg)
    got = step_losses(run)
    assert sorted(got) == list(range(1, cfg.train.steps + 1))
    for step in range(cfg.train.steps):
        assert got[step + 1] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got[step + 1], want[step])
    assert want[-1] < want[0]  # the adapters moved the policy away from its reference
    records = [r for r in metrics(run) if "loss" in r]
    assert records[0]["pref_margin"] == pytest.approx(0.0, abs=1e-6)  # peft starts B at zero: policy = reference
    assert abs(records[-1]["pref_margin"]) > 1e-3
