"""LoRA fine-tuning with the real trainer (DeepSpeed ZeRO-3 on gloo ranks): equivalence with one
rank and with a plain single-process peft loop, a frozen base, small checkpoints, resume (bitwise,
and on another world size), recovery from non-finite steps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ENV, REPO, dialogues, step_losses, torchrun

from llada_ds.config import load_run_config
from llada_ds.data.sft import SFTBatches, SFTData, build_sft_cache
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.diffusion import NoiseConfig, SFTObjective
from llada_ds.hf.export import export_model
from llada_ds.model import LLaDAModel
from llada_ds.train.optim import adamw
from llada_ds.train.plain import train_plain
from llada_ds.train.schedule import learning_rate
from llada_ds.weights import LATEST, RUN_STATE, load_model

STEPS = 8
RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def lora(recipe, sp_tokenizer, tmp_path_factory):
    """A base (a Hugging Face folder in LLaDA's layout, seeded weights), an SFT cache, and the
    overrides of a LoRA SFT run on them."""
    root = tmp_path_factory.mktemp("lora")
    cfg = load_run_config(str(recipe))
    torch.manual_seed(7)
    export_model(LLaDAModel(cfg.model.build()), Tokenizer.load(str(sp_tokenizer)), root / "base", dtype="fp32",
                 verify=False)
    convs = root / "convs.jsonl"
    convs.write_text("".join(json.dumps(d) + "\n" for d in dialogues(60)))
    build_sft_cache([str(convs)], str(sp_tokenizer), str(root / "sft"), val_fraction=0.2, split_seed=1)
    args = ["--objective.kind=sft", f"--data.train={root / 'sft' / 'train'}",
            f"--data.validation={root / 'sft' / 'validation'}", "--data.seq_len=256", f"--train.steps={STEPS}",
            f"--train.init_from={root / 'base'}", f"--lora.rank={RANK}", f"--lora.alpha={ALPHA}",
            "--eval.every=0", "--checkpoint.every=4", "--checkpoint.keep_last=3"]
    return {"root": root, "base": root / "base", "args": args}


@pytest.fixture(scope="module")
def whole(recipe, lora):
    """The uninterrupted 2-rank run, through tests/scripts/lora_check.py (checks inside the engine)."""
    run = lora["root"] / "whole"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "scripts" / "lora_check.py"), str(recipe), str(run), *lora["args"]]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run, json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])


def plain_peft_losses(recipe: Path, lora: dict) -> list[float]:
    """The same LoRA SFT in the plain single-process loop, with the model wrapped by peft's own
    get_peft_model (targets named by our module names), no DeepSpeed."""
    from peft import LoraConfig, get_peft_model

    cfg = load_run_config(str(recipe), lora["args"])
    tok = Tokenizer.load(cfg.data.tokenizer)
    model = load_model(lora["base"])[0].train()
    torch.manual_seed(cfg.train.seed)  # the adapters' draws: the trainer seeds them with train.seed
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=[
        "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "ffn.gate_proj", "ffn.up_proj", "ffn.down_proj"]))
    batches = SFTBatches(SFTData(cfg.data.train, tok.fingerprint), cfg.train.global_batch, cfg.train.micro_batch,
                         cfg.data.seed, cfg.data.seq_len)
    o = cfg.objective
    objective = SFTObjective(tok.special.mask, noise=NoiseConfig(o.noise_seed, o.eps, o.random_length_prob))
    return train_plain(model, objective, batches.step, STEPS, adamw(model, cfg.optim),
                       lambda step: learning_rate(step, cfg.train.steps, cfg.optim.lr, cfg.schedule),
                       cfg.optim.grad_clip)


@pytest.mark.timeout(600)
def test_lora_sft_on_two_ranks_equals_one_rank_and_a_plain_peft_loop(recipe, lora, whole, tmp_path):
    run, checks = whole
    assert checks == {"optimizer_steps_adapters_only": True, "adam_moments_per_adapter_element": pytest.approx(
        1.0, abs=0.01), "base_unchanged": True, "reference_is_base": True, "adapted_differs": True,
        "flags_restored": True}
    res = torchrun(recipe, tmp_path / "one", *lora["args"], nproc=1)
    assert "trainable: LoRA adapters" in res.stdout and "frozen base" in res.stdout
    two, one = step_losses(run), step_losses(tmp_path / "one")
    ref = plain_peft_losses(recipe, lora)
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))  # steps are counted from 1
    for step in range(1, STEPS + 1):
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), (step, two[step], one[step])
        assert two[step] == pytest.approx(ref[step - 1], rel=1e-5, abs=1e-6), (step, two[step], ref[step - 1])
    assert ref[-1] < ref[0]
    state = json.loads((run / "checkpoints" / "step-00000008" / RUN_STATE).read_text())
    assert state["lora"]["base"]["path"] == str(lora["base"].resolve())
    assert state["lora"]["base"]["fingerprint"].startswith("sha256:")
    assert state["lora"]["targets"] == ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]


def _bytes(ckpt: Path) -> int:
    return sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file())


@pytest.mark.timeout(900)
def test_lora_resume_is_bitwise_and_continues_on_another_world_size(recipe, lora, whole, tmp_path):
    run, _ = whole
    parts = tmp_path / "parts"
    torchrun(recipe, parts, *lora["args"], "--stop-after", "4")
    assert (parts / "checkpoints" / LATEST).read_text() == "step-00000004"
    shutil.copytree(parts, tmp_path / "resized")
    # Another base under the same path is refused: the adapters belong to the recorded one.
    other = tmp_path / "other-base"
    torch.manual_seed(8)
    export_model(LLaDAModel(load_run_config(str(recipe)).model.build()), Tokenizer.load(load_run_config(
        str(recipe)).data.tokenizer), other, dtype="fp32", verify=False)
    cmd = [sys.executable, "-m", "llada_ds.train", "--recipe", str(recipe), "--run-dir", str(parts),
           "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"), *lora["args"], f"--train.init_from={other}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=200)
    assert res.returncode != 0 and "are not the ones the checkpoint's LoRA adapters were trained on" in res.stderr, \
        res.stderr[-2000:]
    torchrun(recipe, parts, *lora["args"])
    assert step_losses(parts) == step_losses(run)  # every step, bit for bit

    res = torchrun(recipe, tmp_path / "resized", *lora["args"], nproc=1)
    assert "written by 2 ranks) through its universal form" in res.stdout
    resized, whole_losses = step_losses(tmp_path / "resized"), step_losses(run)
    assert sorted(resized) == list(range(1, STEPS + 1))
    for step in resized:
        assert resized[step] == pytest.approx(whole_losses[step], abs=1e-5), (step, resized[step], whole_losses[step])

    # A checkpoint holds the adapters and their Adam state, not the base: against a full
    # fine-tuning checkpoint of the same model (both written by one rank).
    full = tmp_path / "full"
    torchrun(recipe, full, *[a for a in lora["args"] if not a.startswith("--lora.")], "--stop-after", "1", nproc=1)
    ratio = _bytes(tmp_path / "resized" / "checkpoints" / "step-00000008") / _bytes(full / "checkpoints" /
                                                                                  "step-00000001")
    print(f"LoRA rank {RANK} checkpoint / full checkpoint: {ratio:.3f}")
    assert ratio < 0.1


@pytest.mark.timeout(400)
def test_lora_recovers_from_non_finite_steps(recipe, lora, tmp_path):
    run = tmp_path / "run"
    res = torchrun(recipe, run, *lora["args"], "--train.steps=5", "--checkpoint.every=2",
                   "--faults.nonfinite_steps=[3, 4]", "--recovery.max_bad_steps=2", nproc=1)
    assert "recovery 1: reloaded step-00000002" in res.stdout
    firsts: dict = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            firsts.setdefault(r["step"], []).append(r)
    assert [r.get("skipped") for r in firsts[4]][0]
    assert firsts[3][0]["loss"] != firsts[3][0]["loss"] or firsts[3][0].get("skipped")
    assert firsts[3][1]["loss"] == firsts[3][1]["loss"] and firsts[3][1]["lr_scale"] == 0.5
    assert max(firsts) == 5


def test_a_lora_target_that_does_not_exist_fails_naming_the_valid_ones(recipe, lora):
    res = subprocess.run([sys.executable, "-m", "llada_ds.train", "--recipe", str(recipe), *lora["args"],
                          "--lora.targets=[q_proj,o_proj]"], capture_output=True, text=True, env=ENV, timeout=100)
    assert res.returncode == 2
    assert "'o_proj' matches no module (LLaDA calls Llama's o_proj attn_out)" in res.stderr
    assert "q_proj, k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out" in res.stderr
