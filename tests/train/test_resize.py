"""Resuming a run on another number of ranks, through DeepSpeed's universal checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import CPU_CONFIG, ENV, REPO, step_losses, torchrun

STEPS = 12


@pytest.mark.timeout(900)
def test_resuming_on_another_world_size_continues_the_uninterrupted_run(recipe, tmp_path):
    """2 ranks -> 1 (converted by the trainer itself) -> 2 (converted by hand with the tool)."""
    torchrun(recipe, tmp_path / "whole")
    run = tmp_path / "resized"
    torchrun(recipe, run, "--stop-after", "4")
    res = torchrun(recipe, run, "--stop-after", "4", nproc=1)
    assert "written by 2 ranks) through its universal form" in res.stdout
    assert (run / "checkpoints" / "universal" / "step-00000004" / "universal.json").is_file()
    env = ENV
    tool = subprocess.run([sys.executable, str(REPO / "tools" / "elastic_resume.py"), str(run)],
                          capture_output=True, text=True, env=env, timeout=200)
    assert tool.returncode == 0, tool.stderr[-2000:]
    assert "step 8, written by 1 ranks" in tool.stdout
    res = torchrun(recipe, run, nproc=2)
    assert "step-00000008 (written by 1 ranks)" in res.stdout
    whole, resized = step_losses(tmp_path / "whole"), step_losses(run)
    assert sorted(resized) == list(range(1, STEPS + 1))
    for step in resized:  # same samples, same noise, same optimizer state: only summation order differs
        assert resized[step] == pytest.approx(whole[step], abs=1e-5), (step, resized[step], whole[step])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples_seen"] for r in records if "loss" in r][-1] == STEPS * 8
    # Universal copies go with the checkpoints they were made from (keep_last=2: steps 8 and 12).
    assert sorted(p.name for p in (run / "checkpoints" / "universal").glob("step-*")) == ["step-00000008"]


@pytest.mark.timeout(300)
def test_a_world_size_that_cannot_split_the_global_batch_is_refused(recipe, tmp_path):
    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "1", "--eval.every=0")
    env = ENV
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m",
           "llada_ds.train", "--recipe", str(recipe), "--run-dir", str(run),
           "--deepspeed_config", str(CPU_CONFIG)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode != 0
    assert "global batch 8" in res.stderr or "global_batch=8" in res.stderr, res.stderr[-2000:]
    assert not (run / "checkpoints" / "universal").exists()  # refused before converting anything


def test_elastic_resume_tool_refuses_what_it_cannot_convert(tmp_path):
    env = ENV
    res = subprocess.run([sys.executable, str(REPO / "tools" / "elastic_resume.py"), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=100)
    assert res.returncode == 1 and f"{tmp_path}: no llada-ds checkpoint" in res.stderr
