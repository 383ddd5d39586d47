"""`llada-ds train`: checks before any process starts, and stop signals that reach every rank.

Each run here is the real launcher (`python -m llada_ds.cli train`, torchrun underneath, DeepSpeed
ZeRO-3 on gloo ranks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import ENV, step_losses

from llada_ds.weights import LATEST, RUN_STATE


def llada_ds(*args: str, cwd: Path | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llada_ds.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300, **popen)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("override, message", [
    ("--optim.learnrate=1", "unknown config key 'optim.learnrate'"),
    ("--train.global_batch=6", "train.global_batch=6 is not divisible by world size 2 x micro batch 2"),
    ("--model.attention=flash", "model.attention=flash needs the flash-attn package on a CUDA machine"),
    ("--data.train=/nowhere/train", "data.train=/nowhere/train: no such file or directory"),
    ("--objective.kind=sft", "is not an SFT cache"),
])
def test_a_bad_config_is_one_line_and_exit_code_2_before_any_process_starts(recipe, tmp_path, override, message):
    start = time.perf_counter()
    res = llada_ds("train", "--nproc", "2", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run"), override)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llada-ds: error:") and message in lines[0], res.stderr
    assert "torch.distributed" not in res.stderr and not (tmp_path / "run").exists()
    assert time.perf_counter() - start < 60  # no rank was started (a 2-rank start takes longer on this machine)


def test_nproc_below_one_is_refused_in_one_line(recipe, tmp_path):
    res = llada_ds("train", "--nproc", "0", "--recipe", str(recipe))
    assert res.returncode == 2 and res.stderr.strip() == "llada-ds: error: --nproc must be at least 1, got 0"


@pytest.mark.timeout(300)
def test_a_resume_with_another_global_batch_is_refused_not_renumbered(recipe, tmp_path):
    run = tmp_path / "run"
    res = llada_ds("train", "--nproc", "1", "--recipe", str(recipe), "--run-dir", str(run), "--stop-after", "2",
                   "--eval.every=0")
    assert res.returncode == 0, res.stderr[-2000:]
    before = (run / "metrics.jsonl").read_text()
    res = llada_ds("train", "--nproc", "1", "--recipe", str(recipe), "--run-dir", str(run),
                   "--train.global_batch=16", "--eval.every=0")
    assert res.returncode == 2
    assert "trained with train.global_batch=8, this run asks for 16" in res.stderr
    assert "--train.init_from" in res.stderr and (run / "metrics.jsonl").read_text() == before


@pytest.mark.timeout(300)
def test_a_failed_relaunch_keeps_config_yaml_and_logs_its_error(recipe, tmp_path):
    run = tmp_path / "run"
    assert llada_ds("train", "--nproc", "1", "--recipe", str(recipe), "--run-dir", str(run), "--stop-after", "1",
                    "--eval.every=0").returncode == 0
    config = (run / "config.yaml").read_text()
    # Another model shape than the checkpoint: the rank refuses it after starting.
    res = llada_ds("train", "--nproc", "1", "--recipe", str(recipe), "--run-dir", str(run), "--model.n_layers=3",
                   "--eval.every=0")
    assert res.returncode != 0
    assert (run / "config.yaml").read_text() == config
    assert "holds another model shape: n_layers: checkpoint 2, this run 3" in (run / "train.log").read_text()


@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_launcher_reaches_every_rank_which_save_and_exit(recipe, tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "llada_ds.cli", "train", "--nproc", "2", "--recipe", str(recipe),
                             "--run-dir", str(run), "--train.steps=400", "--checkpoint.every=0", "--eval.every=0"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    group: list[psutil.Process] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((run / "metrics.jsonl").is_file()
                                              and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        group = psutil.Process(proc.pid).children(recursive=True)  # torchrun and both ranks
        assert len(group) >= 3
        os.kill(proc.pid, sig)  # the launcher only, as a scheduler or Ctrl-C would
        out, _ = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in group:
            if p.is_running():
                p.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "stop requested by a signal" in out and "Traceback" not in out and "KeyboardInterrupt" not in out
    gone, alive = psutil.wait_procs(group, timeout=30)
    assert not alive, [p.pid for p in alive]  # nothing of the job goes on training
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / LATEST).read_text() / RUN_STATE).read_text())
    assert 3 <= state["step"] < 400 and max(step_losses(run)) == state["step"]
