"""The commands a new user runs on a trained run and on its export: clean output, no prompts, errors
up front in one line, and a round trip through export and import that keeps every file."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, torchrun


def llada_ds(*args: str, cwd: Path | None = None, stdin: int | None = subprocess.DEVNULL,
             timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llada_ds.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, stdin=stdin, timeout=timeout)


@pytest.fixture(scope="module")
def trained(recipe, tmp_path_factory):
    """A run of two steps and its export (fp32)."""
    root = tmp_path_factory.mktemp("trained")
    torchrun(recipe, root / "run", "--stop-after", "2", "--eval.every=0")
    res = llada_ds("export", str(root / "run"), str(root / "exported"), "--dtype", "fp32")
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "run", root / "exported"


@pytest.mark.timeout(300)
def test_an_exported_folder_is_used_without_any_prompt_and_with_clean_output(trained, recipe, tmp_path):
    run, exported = trained
    # No terminal: a question would have nobody to answer it and end up in the output.
    res = llada_ds("generate", "--model", str(exported), "--prompt", "ROMEO.", "--gen-length", "8", stdin=None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ROMEO.") and len(res.stdout.strip().splitlines()) <= 2
    assert "custom code" not in res.stdout + res.stderr and "[y/N]" not in res.stdout + res.stderr
    # The folder's tokenizer is the run's own in another format: the run's shards are accepted.
    shards = json.loads((run / "checkpoints" / "step-00000002" / "run_state.json").read_text())["config"]["data"]
    res = llada_ds("eval", "--model", str(exported), "--shards", shards["validation"], "--samples", "4",
                   "--seq-len", "64")
    assert res.returncode == 0 and "validation loss" in res.stdout, res.stderr[-2000:]


@pytest.mark.timeout(300)
def test_export_import_export_keeps_every_file(trained, tmp_path):
    _, exported = trained
    assert llada_ds("import", str(exported), str(tmp_path / "imported")).returncode == 0
    res = llada_ds("export", str(tmp_path / "imported"), str(tmp_path / "again"), "--dtype", "fp32")
    assert res.returncode == 0, res.stderr[-2000:]
    first = {p.name: p for p in exported.iterdir() if p.is_file()}
    second = {p.name: p for p in (tmp_path / "again").iterdir() if p.is_file()}
    assert first.keys() == second.keys() and "tokenizer.model" in second
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "model.safetensors", "config.json"):
        assert first[name].read_bytes() == second[name].read_bytes(), name
    tok_config = json.loads(second["tokenizer_config.json"].read_text())
    assert {"is_local", "local_files_only"}.isdisjoint(tok_config) and tok_config["legacy"] is False
    assert tok_config["add_bos_token"] is False and tok_config["add_eos_token"] is False
    modes = {name: stat.S_IMODE(p.stat().st_mode) for name, p in second.items()}
    assert len(set(modes.values())) == 1, modes  # the weights are not private while the rest is not
    assert "pip install llada-ds" not in second["README.md"].read_text()


@pytest.mark.timeout(300)
def test_generate_separates_samples_and_loads_quietly(trained):
    run, _ = trained
    res = llada_ds("generate", "--model", str(run), "--prompt", "ROMEO.", "--prompt", "JULIET.", "--gen-length", "8")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "=== sample 1 of 2 ===" in res.stdout and "=== sample 2 of 2 ===" in res.stdout
    assert "tokens/s" in res.stderr and "Processing zero checkpoint" not in res.stdout + res.stderr
    assert "WARNING" not in res.stderr


@pytest.mark.timeout(300)
def test_eval_and_generate_refuse_bad_arguments_before_loading_anything(trained, tmp_path):
    run, _ = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    res = llada_ds("eval", "--model", str(run), "--multiple-choice", str(bad))
    assert res.returncode == 2 and f"{bad}:1: needs keys context, choices, answer" in res.stderr
    assert "validation loss" not in res.stdout
    res = llada_ds("generate", "--model", str(run), "--prompt", "x", "--cache", "prefix")
    assert res.returncode == 2 and "add --fast" in res.stderr
    res = llada_ds("generate", "--model", str(run), "--prompt", "x", "--threshold", "0.9")
    assert res.returncode == 2 and "add --fast" in res.stderr


def test_small_commands_say_what_is_wrong(recipe, tmp_path):
    res = llada_ds("info", "--preset", "tiny", "--seq-len", "0")
    assert res.returncode == 2 and "--seq-len must be at least 1, got 0" in res.stderr
    assert llada_ds("--version").stdout.startswith("llada-ds ")
    res = llada_ds("train", "--nproc", "1", "--recipe", str(recipe), "--resume", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = llada_ds("overfit", "--steps", "5")
    assert res.returncode == 1 and "too few to judge" in res.stderr


def test_train_help_lists_every_config_key_and_config_prints_a_resolved_recipe(recipe):
    from llada_ds.config import RunConfig

    res = llada_ds("train", "--help")
    assert res.returncode == 0
    for section, values in RunConfig().to_dict().items():
        for key in values:
            assert f"  {key}:" in res.stdout, f"{section}.{key}"
    assert "sft-tiny" in res.stdout and "llada-8b" in res.stdout  # the packaged recipes
    res = llada_ds("config", "--recipe", str(recipe), "--train.steps=7")
    assert res.returncode == 0 and "  steps: 7 " in res.stdout and "# optimizer steps of the whole run" in res.stdout


@pytest.mark.timeout(300)
def test_lm_eval_refuses_unknown_model_args_before_loading_the_model(trained, tmp_path):
    import yaml

    run, _ = trained
    questions = tmp_path / "mc.jsonl"
    questions.write_text(json.dumps({"context": "ROMEO. ", "choices": ["O, she", "xq"], "answer": 0}) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mc.yaml").write_text(yaml.safe_dump({
        "task": "llada_args_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(questions)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}]}))
    env_offline = ["--include_path", str(tmp_path / "tasks"), "--tasks", "llada_args_mc"]
    for model_args, message in ((f"model={run},mc_nmu=8", "unknown model_args mc_nmu"),
                                (f"model={run},mc_num=8,mc_batch=3", "mc_num=8 must be a positive multiple")):
        res = llada_ds("lm-eval", "run", "--model", "llada-ds", "--model_args", model_args, *env_offline,
                       "--output_path", str(tmp_path / "out"))
        assert res.returncode == 2 and message in res.stderr, res.stderr[-3000:]
