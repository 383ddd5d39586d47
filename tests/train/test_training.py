"""Training with DeepSpeed ZeRO-3 on gloo ranks: equivalence, resume, signals, crashes, recovery.

Every run is a real `torchrun -m llada_ds.train` with ZeRO-3 (ds_configs/cpu.json) on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import CPU_CONFIG, ENV, REPO, dialogues, one_rank_script, step_losses, torchrun

from llada_ds.config import load_run_config
from llada_ds.data.loader import DistributedBatches, WindowDataset
from llada_ds.data.shards import ShardSet
from llada_ds.data.storage import LocalStorage
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.diffusion import NoiseConfig, PretrainObjective
from llada_ds.model import LLaDAModel
from llada_ds.train.optim import adamw
from llada_ds.train.plain import train_plain
from llada_ds.train.schedule import learning_rate
from llada_ds.weights import LATEST, RUN_STATE

STEPS = 12


def reference_losses(recipe: Path, steps: int) -> list[float]:
    """The same training in the plain single-process loop (llada_ds/train/plain.py), no DeepSpeed."""
    cfg = load_run_config(str(recipe))
    tok = Tokenizer.load(cfg.data.tokenizer)
    torch.manual_seed(cfg.train.seed)
    model = LLaDAModel(cfg.model.build())
    batches = DistributedBatches(WindowDataset(ShardSet(LocalStorage(cfg.data.train)), cfg.data.seq_len,
                                               cfg.data.seed), cfg.train.global_batch, cfg.train.micro_batch)
    o = cfg.objective
    objective = PretrainObjective(tok.special.mask, noise=NoiseConfig(o.noise_seed, o.eps, o.random_length_prob))
    return train_plain(model, objective, batches.step, steps, adamw(model, cfg.optim),
                       lambda step: learning_rate(step, cfg.train.steps, cfg.optim.lr, cfg.schedule), cfg.optim.grad_clip)


@pytest.mark.timeout(400)
def test_two_rank_zero3_matches_a_plain_single_process_loop(recipe, tmp_path):
    res = torchrun(recipe, tmp_path / "run")
    got = step_losses(tmp_path / "run")
    ref = reference_losses(recipe, STEPS)
    assert sorted(got) == list(range(1, STEPS + 1))  # steps are counted from 1
    for step in range(STEPS):
        assert got[step + 1] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), (step, got[step + 1], ref[step])
    assert ref[-1] < ref[0]
    # The run logged what the conventions ask for.
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    for key in ("step", "loss", "lr", "tokens_seen", "samples_seen", "grad_norm", "tokens_per_s"):
        assert key in train_records[0]
    assert train_records[-1]["samples_seen"] == STEPS * 8
    assert any("val_loss" in r for r in records)
    assert "MFU" in res.stdout and "validation loss" in res.stdout
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.timeout(600)
def test_stop_and_resume_reproduce_the_uninterrupted_losses_bitwise(recipe, tmp_path):
    torchrun(recipe, tmp_path / "whole")
    # Stopping on a checkpoint step (4, checkpoint.every=4) saves once and resumes from it.
    torchrun(recipe, tmp_path / "parts", "--stop-after", "4")
    assert (tmp_path / "parts" / "checkpoints" / LATEST).read_text() == "step-00000004"
    torchrun(recipe, tmp_path / "parts", "--resume", "auto")
    whole, parts = step_losses(tmp_path / "whole"), step_losses(tmp_path / "parts")
    assert parts == whole  # every step, exactly (floats compared bit for bit via their JSON repr)
    # Only the last keep_last=2 complete checkpoints remain.
    kept = sorted(p.name for p in (tmp_path / "parts" / "checkpoints").glob("step-*"))
    assert kept == ["step-00000008", "step-00000012"]


def _wait_for(predicate, timeout: float, proc) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


@pytest.mark.timeout(600)
def test_sigterm_leaves_a_resumable_checkpoint(recipe, tmp_path):
    run = tmp_path / "run"
    proc = torchrun(recipe, run, "--train.steps=400", "--checkpoint.every=0", "--eval.every=0", wait=False)
    try:
        metrics = run / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 120, proc)
        os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: every process of the job
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stop requested by a signal" in out, out[-3000:]
    tag = (run / "checkpoints" / LATEST).read_text()
    state = json.loads((run / "checkpoints" / tag / RUN_STATE).read_text())
    assert 3 <= state["step"] < 400
    torchrun(recipe, run, "--train.steps=400", "--checkpoint.every=0", "--eval.every=0", "--stop-after", "2")
    assert max(step_losses(run)) == state["step"] + 2  # two more steps, counted from 1


@pytest.mark.timeout(600)
def test_kill_9_during_a_save_leaves_the_previous_checkpoint_usable(recipe, tmp_path):
    run = tmp_path / "run"
    proc = torchrun(recipe, run, "--faults.save_delay_seconds=30", "--eval.every=0", wait=False)
    try:
        # The step-4 save completes after its delay; kill while step 8 is being saved.
        _wait_for(lambda: (run / "checkpoints" / "step-00000008").is_dir(), 240, proc)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (run / "checkpoints" / LATEST).read_text() == "step-00000004"
    assert not (run / "checkpoints" / "step-00000008" / RUN_STATE).exists()
    torchrun(recipe, run, "--eval.every=0")
    whole = tmp_path / "whole"
    torchrun(recipe, whole, "--eval.every=0")
    assert step_losses(run) == step_losses(whole)


@pytest.mark.timeout(600)
def test_non_finite_losses_skip_updates_then_recover_from_the_last_checkpoint(recipe, tmp_path):
    run = tmp_path / "run"
    res = torchrun(recipe, run, "--faults.nonfinite_steps=[6, 7, 8]", "--recovery.max_bad_steps=3",
                   "--eval.every=0")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in lines if r.get("skipped")]
    assert skipped == [6, 7, 8]
    assert "recovery 1: reloaded step-00000004" in res.stdout
    # After the reload, step 5 sees the same weights, data and noise as the first time...
    firsts = {}
    for r in lines:
        firsts.setdefault(r["step"], []).append(r)
    assert [r["loss"] for r in firsts[5]][0] == [r["loss"] for r in firsts[5]][1]
    # ...but trains at half the learning rate from then on, to the end.
    assert firsts[5][1]["lr_scale"] == 0.5 and firsts[5][1]["lr"] == pytest.approx(firsts[5][0]["lr"] * 0.5)
    assert max(firsts) == STEPS
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / LATEST).read_text() / RUN_STATE).read_text())
    assert state["recoveries"] == 1 and state["lr_scale"] == 0.5


@pytest.mark.timeout(300)
def test_a_skipped_step_changes_neither_weights_nor_optimizer_state(recipe, tmp_path):
    result = one_rank_script("skip_check.py", recipe, tmp_path)
    assert result == {"skipped_reason": "non-finite loss", "weights_unchanged": True, "adam_state_unchanged": True,
                      "next_step_applied": True, "weights_changed_after_good_step": True,
                      "spike_reason": "loss spike", "spike_left_state_untouched": True}


@pytest.mark.timeout(300)
def test_recoveries_compound_and_give_up_after_the_limit(recipe, tmp_path):
    result = one_rank_script("recover_check.py", recipe, tmp_path)
    assert result["seen"] == [{"recoveries": 1, "lr_scale": 0.5, "step": 2},
                              {"recoveries": 2, "lr_scale": 0.25, "step": 2}]
    assert "after 2 recoveries: giving up" in result["gave_up"]


@pytest.mark.timeout(300)
def test_checkpoint_of_another_model_or_tokenizer_is_refused(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "1", "--eval.every=0", nproc=1)
    env = ENV
    cmd = [sys.executable, "-m", "llada_ds.train", "--recipe", str(recipe), "--run-dir", str(run),
           "--deepspeed_config", str(CPU_CONFIG), "--model.n_layers=3"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode != 0
    assert "holds another model shape: n_layers: checkpoint 2, this run 3" in res.stderr


@pytest.mark.timeout(400)
def test_init_from_a_given_checkpoint_loads_exactly_its_weights(recipe, tmp_path):
    src = tmp_path / "src"
    torchrun(recipe, src, "--stop-after", "8", "--eval.every=0", "--checkpoint.keep_last=3")
    assert (src / "checkpoints" / LATEST).read_text() == "step-00000008"
    script = REPO / "tests" / "scripts" / "init_from_check.py"
    env = ENV
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(recipe), str(src / "checkpoints" / "step-00000004"), str(tmp_path / "new")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][-1])
    assert result == {"matches_requested": True, "matches_latest": False, "step": 0}


@pytest.mark.timeout(300)
def test_autoregressive_baseline_trains_with_the_same_loop(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--objective.kind=ar", "--train.steps=6", "--eval.samples=8", "--eval.every=0")
    losses = step_losses(run)
    assert sorted(losses) == list(range(1, 7)) and losses[6] < losses[1]
    vals = [json.loads(x)["val_loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert vals and vals[-1] < 9.0


@pytest.mark.timeout(500)
def test_sft_training_is_the_same_on_one_and_two_ranks(recipe, sp_tokenizer, tmp_path):
    from llada_ds.data.sft import build_sft_cache

    convs = tmp_path / "convs.jsonl"
    convs.write_text("".join(json.dumps(d) + "\n" for d in dialogues(60)))
    build_sft_cache([str(convs)], str(sp_tokenizer), str(tmp_path / "sft"), val_fraction=0.2, split_seed=1)
    args = ["--objective.kind=sft", f"--data.train={tmp_path / 'sft' / 'train'}",
            f"--data.validation={tmp_path / 'sft' / 'validation'}", "--data.seq_len=256", "--train.steps=6",
            "--eval.samples=8",
            "--eval.every=3", "--checkpoint.every=0"]
    torchrun(recipe, tmp_path / "one", *args, nproc=1)
    res = torchrun(recipe, tmp_path / "two", *args)
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(one) == list(range(1, 7))
    for s in one:
        assert two[s] == pytest.approx(one[s], rel=1e-5)
    assert "padding" in res.stdout and "validation loss" in res.stdout
    records = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["padding_share"] < 1 for r in records if "loss" in r)
