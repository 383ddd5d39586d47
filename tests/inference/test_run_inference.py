"""Sampling and evaluating a model trained by the real trainer: generate, chat, eval, lm-eval."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from helpers import ENV, torchrun


@pytest.mark.timeout(300)
def test_generate_from_a_trained_run_directory(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "2", "--eval.every=0")
    from llada_ds.weights import load_model

    model, source = load_model(run)
    assert source.run_state["step"] == 2 and model.config.n_layers == 2
    env = ENV
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
    env = ENV
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
    env = {**ENV, "HF_DATASETS_OFFLINE": "1",
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
    # Progress bars on stderr for the likelihood passes and the generations.
    for bar in ("loglikelihood: Monte Carlo samples", "loglikelihood: greedy check", "generate_until"):
        assert bar in res.stderr, bar
    assert list((tmp_path / "lm_eval_out").rglob("results*.json"))
