"""Training with DeepSpeed ZeRO-3 on 2 gloo ranks: equivalence, resume, signals, crashes, recovery.

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
import yaml

from llada_ds.config import load_run_config
from llada_ds.data.loader import DistributedBatches, WindowDataset
from llada_ds.data.shards import ShardSet
from llada_ds.data.storage import LocalStorage
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.diffusion import NoiseConfig, diffusion_loss, pretrain_batch
from llada_ds.model import LLaDAModel
from llada_ds.train.checkpoint import LATEST, RUN_STATE
from llada_ds.train.engine import param_groups
from llada_ds.train.schedule import learning_rate

from runs import step_losses

REPO = Path(__file__).resolve().parents[1]
STEPS = 12


def torchrun(recipe: Path, run_dir: Path, *extra: str, nproc: int = 2, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llada_ds.train", "--recipe", str(recipe), "--run-dir", str(run_dir),
           "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"), *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def reference_losses(recipe: Path, steps: int) -> list[float]:
    """The same training written as a plain single-process PyTorch loop, no DeepSpeed."""
    cfg = load_run_config(str(recipe))
    tok = Tokenizer.load(cfg.data.tokenizer)
    torch.manual_seed(cfg.train.seed)
    model = LLaDAModel(cfg.model.build())
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    batches = DistributedBatches(WindowDataset(ShardSet(LocalStorage(cfg.data.train)), cfg.data.seq_len,
                                               cfg.data.seed), cfg.train.global_batch, cfg.train.micro_batch)
    noise = NoiseConfig(cfg.objective.noise_seed, cfg.objective.eps, cfg.objective.random_length_prob)
    n_micro = cfg.train.global_batch // cfg.train.micro_batch
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.train.steps, cfg.optim.lr, cfg.schedule)
        opt.zero_grad()
        total = 0.0
        for mb in batches.step(step):
            batch = pretrain_batch(mb.tokens, mb.sample_indices, step, tok.special.mask, noise)
            out = diffusion_loss(model(batch.noisy, logits_mask=batch.masked), batch)
            (out.loss / n_micro).backward()
            total += out.loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        losses.append(total / n_micro)
    return losses


@pytest.mark.timeout(400)
def test_two_rank_zero3_matches_a_plain_single_process_loop(recipe, tmp_path):
    res = torchrun(recipe, tmp_path / "run")
    got = step_losses(tmp_path / "run")
    ref = reference_losses(recipe, STEPS)
    assert sorted(got) == list(range(STEPS))
    for step in range(STEPS):
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), (step, got[step], ref[step])
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
    assert max(step_losses(run)) == state["step"] + 1


@pytest.mark.timeout(600)
def test_kill_9_during_a_save_leaves_the_previous_checkpoint_usable(recipe, tmp_path):
    run = tmp_path / "run"
    proc = torchrun(recipe, run, "--recovery.save_delay_seconds=30", "--eval.every=0", wait=False)
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
    res = torchrun(recipe, run, "--recovery.inject_nonfinite_steps=[5, 6, 7]", "--recovery.max_bad_steps=3",
                   "--eval.every=0")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in lines if r.get("skipped")]
    assert skipped == [5, 6, 7]
    assert "recovery 1: reloaded step-00000004" in res.stdout
    # After the reload, step 4 sees the same weights, data and noise as the first time...
    firsts = {}
    for r in lines:
        firsts.setdefault(r["step"], []).append(r)
    assert [r["loss"] for r in firsts[4]][0] == [r["loss"] for r in firsts[4]][1]
    # ...but trains at half the learning rate from then on, to the end.
    assert firsts[4][1]["lr_scale"] == 0.5 and firsts[4][1]["lr"] == pytest.approx(firsts[4][0]["lr"] * 0.5)
    assert max(firsts) == STEPS - 1
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / LATEST).read_text() / RUN_STATE).read_text())
    assert state["recoveries"] == 1 and state["lr_scale"] == 0.5


def one_rank_script(name: str, recipe: Path, tmp_path: Path) -> dict:
    """Run tests/scripts/NAME (one process, in-process Trainer) and return the JSON it prints last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    res = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / name), str(recipe), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=250)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "llada_ds.train", "--recipe", str(recipe), "--run-dir", str(run),
           "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json"), "--model.n_layers=3"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode != 0
    assert "holds another model shape: n_layers: checkpoint 2, this run 3" in res.stderr


@pytest.mark.timeout(400)
def test_init_from_a_given_checkpoint_loads_exactly_its_weights(recipe, tmp_path):
    src = tmp_path / "src"
    torchrun(recipe, src, "--stop-after", "8", "--eval.every=0", "--checkpoint.keep_last=3")
    assert (src / "checkpoints" / LATEST).read_text() == "step-00000008"
    script = REPO / "tests" / "scripts" / "init_from_check.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(recipe), str(src / "checkpoints" / "step-00000004"), str(tmp_path / "new")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][-1])
    assert result == {"matches_requested": True, "matches_latest": False, "step": 0}


@pytest.mark.timeout(900)
def test_resuming_on_another_world_size_continues_the_uninterrupted_run(recipe, tmp_path):
    """2 ranks -> 1 (converted by the trainer itself) -> 2 (converted by hand with the tool)."""
    torchrun(recipe, tmp_path / "whole")
    run = tmp_path / "resized"
    torchrun(recipe, run, "--stop-after", "4")
    res = torchrun(recipe, run, "--stop-after", "4", nproc=1)
    assert "written by 2 ranks) through its universal form" in res.stdout
    assert (run / "checkpoints" / "universal" / "step-00000004" / "universal.json").is_file()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    tool = subprocess.run([sys.executable, str(REPO / "tools" / "elastic_resume.py"), str(run)],
                          capture_output=True, text=True, env=env, timeout=200)
    assert tool.returncode == 0, tool.stderr[-2000:]
    assert "step 8, written by 1 ranks" in tool.stdout
    res = torchrun(recipe, run, nproc=2)
    assert "step-00000008 (written by 1 ranks)" in res.stdout
    whole, resized = step_losses(tmp_path / "whole"), step_losses(run)
    assert sorted(resized) == list(range(STEPS))
    for step in range(STEPS):  # same samples, same noise, same optimizer state: only summation order differs
        assert resized[step] == pytest.approx(whole[step], abs=1e-5), (step, resized[step], whole[step])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples_seen"] for r in records if "loss" in r][-1] == STEPS * 8
    # Universal copies go with the checkpoints they were made from (keep_last=2: steps 8 and 12).
    assert sorted(p.name for p in (run / "checkpoints" / "universal").glob("step-*")) == ["step-00000008"]


@pytest.mark.timeout(300)
def test_a_world_size_that_cannot_split_the_global_batch_is_refused(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "1", "--eval.every=0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m",
           "llada_ds.train", "--recipe", str(recipe), "--run-dir", str(run),
           "--deepspeed_config", str(REPO / "ds_configs" / "cpu.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode != 0
    assert "global batch 8" in res.stderr or "global_batch=8" in res.stderr, res.stderr[-2000:]
    assert not (run / "checkpoints" / "universal").exists()  # refused before converting anything


def test_elastic_resume_tool_refuses_what_it_cannot_convert(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    res = subprocess.run([sys.executable, str(REPO / "tools" / "elastic_resume.py"), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=100)
    assert res.returncode == 1 and f"{tmp_path}: no llada-ds checkpoint" in res.stderr


@pytest.mark.timeout(300)
def test_generate_from_a_trained_run_directory(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "2", "--eval.every=0")
    from llada_ds.train.checkpoint import load_plain_model

    model, state = load_plain_model(run)
    assert state["step"] == 2 and model.config.n_layers == 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "llada_ds.cli", "generate", "--model", str(run), "--prompt", "ROMEO. ",
           "--prompt", "To be, or not", "--gen-length", "8", "--block-length", "4", "--show-steps"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("[step ") == 2 * 8  # two prompts, eight steps
    lines = res.stdout.splitlines()
    assert any(line.startswith("ROMEO. ") for line in lines) and any(line.startswith("To be, or not") for line in lines)


@pytest.mark.timeout(300)
def test_chat_and_fast_generation_from_a_trained_run(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "1", "--eval.every=0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "llada_ds.cli", "chat", "--model", str(run), "--gen-length", "8",
           "--block-length", "4", "--fast", "--threshold", "0.5"]
    res = subprocess.run(cmd, input="Hello there\nAnd again\n\n", capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("assistant: ") == 2
    fast = subprocess.run([sys.executable, "-m", "llada_ds.cli", "generate", "--model", str(run), "--prompt", "ROMEO.",
                           "--gen-length", "8", "--fast", "--cache", "prefix"],
                          capture_output=True, text=True, env=env, timeout=200)
    assert fast.returncode == 0 and fast.stdout.startswith("ROMEO."), fast.stderr[-2000:]


@pytest.mark.timeout(400)
def test_eval_and_lm_eval_harness_on_a_trained_run(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--train.steps=2", "--eval.samples=8", "--eval.every=0")
    final_val = [json.loads(x)["val_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                 if "val_loss" in x][-1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in [
        {"context": "ROMEO. ", "choices": ["O, she doth", "xq zz"], "answer": 0},
        {"context": "To be, or not", "choices": [" to be", "!!"], "answer": " to be"},
        {"context": "KING. ", "choices": ["My lord", "7 7 7"], "answer": 0}]))
    res = subprocess.run([sys.executable, "-m", "llada_ds.cli", "eval", "--model", str(run), "--samples", "8",
                          "--multiple-choice", str(mc), "--mc-num", "8"], capture_output=True, text=True, env=env,
                         timeout=200)
    assert res.returncode == 0, res.stderr[-3000:]
    # The stand-alone evaluation reproduces the run's own validation loss (same windows, same noise).
    loss = float(res.stdout.split("validation loss (ELBO bound, nats/token) ")[1].split()[0])
    assert loss == pytest.approx(final_val, rel=1e-4)
    assert "multiple-choice accuracy" in res.stdout and "on 3 questions" in res.stdout

    # lm-evaluation-harness, offline, on two local tasks: likelihood-scored and generated.
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"prompt": p, "target": "x"}) + "\n" for p in ["ROMEO.", "JULIET."]))
    (tasks / "mc.yaml").write_text(yaml.safe_dump({
        "task": "llada_tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(mc)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{0}}", "metric_list": [{"metric": "acc"}]}))
    (tasks / "gen.yaml").write_text(yaml.safe_dump({
        "task": "llada_tiny_gen", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(gen)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}", "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 8},
        "metric_list": [{"metric": "exact_match"}]}))
    res = subprocess.run([sys.executable, "-m", "llada_ds.lm_eval_harness", "run", "--model", "llada-ds",
                          "--model_args", f"model={run},mc_num=8,mc_batch=8,gen_length=8,block_length=4",
                          "--tasks", "llada_tiny_mc,llada_tiny_gen", "--include_path", str(tasks),
                          "--output_path", str(tmp_path / "lm_eval_out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "llada_tiny_mc" in res.stdout and "llada_tiny_gen" in res.stdout
    assert list((tmp_path / "lm_eval_out").rglob("results*.json"))


def _hand_built_llada_folder(folder: Path, tokenizer_dir) -> None:
    """A folder in the released layout with names and config keys written from LLADA_SPEC.md."""
    from safetensors.torch import save_file

    from llada_ds.data.tokenizer import transformers_tokenizer

    d, ffn, vocab, kv = 64, 128, 4096, 2 * 16
    g = torch.Generator().manual_seed(7)
    t = {"model.transformer.wte.weight": (vocab, d), "model.transformer.ln_f.weight": (d,),
         "model.transformer.ff_out.weight": (vocab, d)}
    for i in range(2):
        p = f"model.transformer.blocks.{i}."
        t.update({p + "attn_norm.weight": (d,), p + "q_proj.weight": (d, d), p + "k_proj.weight": (kv, d),
                  p + "v_proj.weight": (kv, d), p + "attn_out.weight": (d, d), p + "ff_norm.weight": (d,),
                  p + "ff_proj.weight": (ffn, d), p + "up_proj.weight": (ffn, d), p + "ff_out.weight": (d, ffn)})
    folder.mkdir(parents=True)
    save_file({k: (torch.randn(s, generator=g) * 0.05 + (1.0 if len(s) == 1 else 0.0)) for k, s in t.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": d, "n_heads": 4, "n_kv_heads": 2,
        "n_layers": 2, "mlp_hidden_size": ffn, "mlp_ratio": 2, "vocab_size": vocab, "embedding_size": vocab,
        "max_sequence_length": 64, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "mask_token_id": 3,
        "eos_token_id": 2, "pad_token_id": 2, "block_type": "llama", "activation_type": "silu",
        "layer_norm_type": "rms", "include_bias": False, "weight_tying": False}))
    transformers_tokenizer(tokenizer_dir).save_pretrained(str(folder))


@pytest.mark.timeout(500)
def test_released_layout_folder_trains_a_step_and_exports_back(recipe, sp_tokenizer, tmp_path):
    folder = tmp_path / "released"
    _hand_built_llada_folder(folder, sp_tokenizer)
    script = REPO / "tests" / "scripts" / "init_from_check.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(recipe), str(folder), str(tmp_path / "check")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1]) == \
        {"matches_requested": True, "step": 0}
    run = tmp_path / "run"
    torchrun(recipe, run, f"--train.init_from={folder}", "--stop-after", "1", "--eval.every=0")
    assert "weights initialised from" in (run / "train.log").read_text()
    out = tmp_path / "exported"
    res = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(run), str(out), "--dtype", "fp32"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verified" in res.stdout
    from safetensors.torch import load_file

    before = load_file(str(folder / "model.safetensors"))
    after = {}
    for f in out.glob("model*.safetensors"):
        after.update(load_file(str(f)))
    assert after.keys() == before.keys()  # the released names, back again
    assert any(not torch.equal(after[k], before[k]) for k in before)  # one training step changed them


@pytest.mark.timeout(400)
def test_export_pushes_every_file_to_a_stub_hub_and_fails_clearly(recipe, tmp_path):
    from hub_stub import GOOD_TOKEN, HubStub

    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "1", "--eval.every=0")
    out = tmp_path / "export"
    base = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(tmp_path / "hf")}
    with HubStub() as hub:
        cmd = [sys.executable, "-m", "llada_ds.cli", "export", str(run), str(out), "--dtype", "fp32",
               "--max-shard-size", "1MB", "--push-to-hub", "someone/tiny-llada", "--revision", "v1"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env={**base, "HF_ENDPOINT": hub.url, "HF_TOKEN": GOOD_TOKEN})
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:] + str(hub.requests)
        local = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        pushed = hub.repos["someone/tiny-llada"]["branches"]["v1"]
        assert pushed == local and len(local) >= 9  # every file, byte for byte
        # A bad token: a clear error, nothing changed locally.
        bad = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(run), str(out), "--dtype",
                              "fp32", "--max-shard-size", "1MB", "--no-verify", "--push-to-hub", "someone/other"],
                             capture_output=True, text=True, timeout=300,
                             env={**base, "HF_ENDPOINT": hub.url, "HF_TOKEN": "bad-token"})
        assert bad.returncode != 0 and "push of" in bad.stderr and "failed" in bad.stderr, bad.stderr[-2000:]
        assert "someone/other" not in hub.repos
    # An endpoint that is not there.
    dead = subprocess.run([sys.executable, "-c", "from llada_ds.hf.export import push_to_hub; "
                           f"push_to_hub({str(out)!r}, 'someone/x')"], capture_output=True, text=True, timeout=120,
                          env={**base, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": GOOD_TOKEN})
    assert dead.returncode != 0 and "failed" in dead.stderr and "127.0.0.1:9" in dead.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == local


@pytest.mark.timeout(400)
def test_export_from_a_universal_checkpoint_equals_export_from_zero_shards(recipe, tmp_path):
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "2", "--eval.every=0")
    ckpt = run / "checkpoints" / "step-00000002"
    universal = tmp_path / "universal"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
                          "--output_folder", str(universal)], capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode == 0, res.stderr[-2000:]
    shutil.copyfile(ckpt / RUN_STATE, universal / RUN_STATE)
    outs = {}
    for name, src in (("zero", run), ("universal", universal)):
        res = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(src), str(tmp_path / name),
                              "--dtype", "fp32"], capture_output=True, text=True, env=env, timeout=200)
        assert res.returncode == 0, res.stderr[-2000:]
        outs[name] = {}
        for f in (tmp_path / name).glob("model*.safetensors"):
            outs[name].update(load_file(str(f)))
    assert outs["zero"].keys() == outs["universal"].keys()
    assert all(torch.equal(outs["zero"][k], outs["universal"][k]) for k in outs["zero"])


@pytest.mark.timeout(300)
def test_autoregressive_baseline_trains_with_the_same_loop(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--objective.kind=ar", "--train.steps=6", "--eval.samples=8", "--eval.every=0")
    losses = step_losses(run)
    assert sorted(losses) == list(range(6)) and losses[5] < losses[0]
    vals = [json.loads(x)["val_loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert vals and vals[-1] < 9.0


@pytest.mark.timeout(500)
def test_sft_training_is_the_same_on_one_and_two_ranks(recipe, sp_tokenizer, tmp_path):
    from test_sft import dialogues

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
    assert sorted(one) == list(range(6))
    for s in one:
        assert two[s] == pytest.approx(one[s], rel=1e-5)
    assert "padding" in res.stdout and "validation loss" in res.stdout
    records = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["padding_share"] < 1 for r in records if "loss" in r)
