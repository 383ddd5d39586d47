"""What a run leaves behind: one step numbering everywhere, a self-contained run directory, and
wandb's offline run files (metrics present, the same run continued after a resume)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ENV, metrics

from llada_ds.train.monitor import wandb_mode


def llada_ds(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llada_ds.cli", *args], capture_output=True, text=True,
                          env=env or ENV, cwd=cwd, timeout=300)


@pytest.mark.timeout(300)
def test_steps_are_counted_from_one_in_the_console_metrics_checkpoints_and_stop_after(recipe, tmp_path):
    run = tmp_path / "run"
    res = llada_ds("train", "--nproc", "2", "--recipe", str(recipe), "--run-dir", str(run), "--stop-after", "4",
                   "--eval.every=2", "--log.every=2", "--checkpoint.every=2")
    assert res.returncode == 0, res.stderr[-3000:]
    records = metrics(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 2, 4]  # before training, after steps 2 and 4
    assert "step       2 | loss" in res.stdout and "step       4 | loss" in res.stdout
    assert "step       0 | validation loss" in res.stdout and "step       4 | validation loss" in res.stdout
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert "stopped at step 4 after 4 step(s) in this process as asked: saved step-00000004" in res.stdout
    res = llada_ds("train", "--nproc", "2", "--recipe", str(recipe), "--run-dir", str(run), "--stop-after", "1",
                   "--eval.every=0")
    assert "stopped at step 5 after 1 step(s) in this process" in res.stdout
    assert [r["step"] for r in metrics(run) if "loss" in r][-1] == 5


@pytest.mark.timeout(400)
def test_a_run_directory_is_self_contained(recipe, tmp_path):
    """Launched with relative paths from one directory; generated from, evaluated and exported from
    another after the tokenizer it was launched with is gone."""
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir()
    elsewhere.mkdir()
    body = yaml.safe_load(recipe.read_text())
    for key in ("train", "validation", "tokenizer"):
        shutil.copytree(body["data"][key], launch / key)
        body["data"][key] = key  # relative to the launch directory
    (launch / "recipe.yaml").write_text(yaml.safe_dump(body))
    res = llada_ds("train", "--nproc", "1", "--recipe", "recipe.yaml", "--run-dir", "run", "--stop-after", "2",
                   "--eval.every=0", cwd=launch)
    assert res.returncode == 0, res.stderr[-3000:]
    run = launch / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["tokenizer"] == str(launch / "tokenizer")  # absolute
    assert (run / "tokenizer" / "tokenizer.model").is_file()
    shutil.rmtree(launch / "tokenizer")  # the original is gone: the run's own copy serves
    gen = llada_ds("generate", "--model", str(run), "--prompt", "ROMEO.", "--gen-length", "8", cwd=elsewhere)
    assert gen.returncode == 0 and gen.stdout.startswith("ROMEO."), gen.stderr[-2000:]
    ev = llada_ds("eval", "--model", str(run), "--samples", "4", cwd=elsewhere)
    assert ev.returncode == 0 and "validation loss (ELBO bound, nats/token)" in ev.stdout, ev.stderr[-2000:]
    exp = llada_ds("export", str(run), "out", "--dtype", "fp32", cwd=elsewhere)
    assert exp.returncode == 0 and (elsewhere / "out" / "tokenizer.model").is_file(), exp.stderr[-2000:]


def _wandb_records(path: Path):
    """The records of a wandb run file, read here without wandb: its leveldb-style log (7-byte file
    header, 32 KiB blocks of records with a 7-byte header: checksum, length, type), each record a
    wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending += chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.timeout(400)
def test_an_offline_wandb_run_holds_the_metrics_and_continues_after_a_resume(recipe, tmp_path):
    home = tmp_path / "home"  # no ~/.netrc, no key: offline by itself
    home.mkdir()
    env = {k: v for k, v in ENV.items() if not k.startswith("WANDB_")} | {"HOME": str(home)}
    run = tmp_path / "run"
    args = ["train", "--nproc", "2", "--recipe", str(recipe), "--run-dir", str(run), "--log.wandb=true",
            "--log.wandb_tags=[ci]", "--eval.every=2"]
    assert llada_ds(*args, "--stop-after", "2", env=env).returncode == 0
    res = llada_ds(*args, "--stop-after", "2", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # one run id, continued
    logged: dict[int, dict] = {}
    for offline in runs:
        for record in _wandb_records(next(offline.glob("run-*.wandb"))):
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                logged.setdefault(int(items.get("_step", record.history.step.num)), {}).update(items)
            elif record.WhichOneof("record_type") == "run":
                assert record.run.display_name == "run" and list(record.run.tags) == ["ci"]
    ours = metrics(run)
    assert sorted(logged) == sorted({r["step"] for r in ours})  # steps 0 (validation) to 4
    for r in ours:
        for key, value in r.items():
            if key not in ("step", "time"):
                assert logged[r["step"]][key] == pytest.approx(value), (r["step"], key)


def test_wandb_goes_online_only_for_a_logged_in_user(tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    assert wandb_mode() == "online"  # what `wandb login` leaves behind
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
