"""Training with shards and the run directory in object storage: a real S3-protocol server on
loopback (moto's server), reached by every rank through s3fs with AWS_ENDPOINT_URL.

The references are the same runs on local disk: the data path must not change a single bit, and a
run directory in a bucket must resume exactly as a local one does."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import fsspec
import pytest
import torch

from helpers import step_losses, torchrun

from llada_ds.cli import main as cli_main
from llada_ds.weights import load_model

STEPS = 8  # checkpoints at 4 and 8


def s3fs_client():
    return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)


def losses_in_bucket(uri: str) -> dict[int, float]:
    out = {}
    for line in s3fs_client().cat_file(f"{uri.removeprefix('s3://')}/metrics.jsonl").decode().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def bucket_data(recipe, s3_server, tmp_path_factory):
    """The recipe's shards and tokenizer copied into a bucket; the overrides that point a run there."""
    import yaml

    cfg = yaml.safe_load(recipe.read_text())["data"]
    with s3_server.environment():
        bucket = s3_server.bucket("train")
        fs = s3fs_client()
        for key in ("train", "validation", "tokenizer"):
            for f in Path(cfg[key]).iterdir():
                fs.put_file(str(f), f"{bucket}/{key}/{f.name}")
    overrides = [f"--data.{k}=s3://{bucket}/{k}" for k in ("train", "validation", "tokenizer")]
    staging = tmp_path_factory.mktemp("staging")  # each rank's local copy of its checkpoint files
    return bucket, overrides + [f"--train.steps={STEPS}", f"--checkpoint.local_dir={staging}"]


@pytest.fixture(scope="module")
def local_whole(recipe, tmp_path_factory):
    """The uninterrupted 2-rank run on local disk: the reference."""
    run = tmp_path_factory.mktemp("local") / "whole"
    torchrun(recipe, run, f"--train.steps={STEPS}")
    return run


def rank_pid_of(launcher_pid: int, rank: int) -> int:
    """The training process with RANK=rank among the launcher's descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo = [launcher_pid]
    while todo:
        for pid in children.get(todo.pop(), []):
            try:
                if f"RANK={rank}".encode() in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0"):
                    return pid
            except OSError:
                pass
            todo.append(pid)
    raise AssertionError(f"no rank {rank} process below {launcher_pid}")


@pytest.fixture(scope="module")
def killed_run(recipe, bucket_data, s3_server):
    """A 2-rank run from the bucket, into the bucket, whose rank 1 is SIGKILLed while it uploads
    the final checkpoint (step 8; step 4 is published). Returns the run's URI and a copy of what it
    left in the bucket at that moment (for the resume on another number of ranks)."""
    bucket, overrides = bucket_data
    run = f"s3://{bucket}/runs/killed"
    ckpts = f"{bucket}/runs/killed/checkpoints"
    with s3_server.environment():
        fs = s3fs_client()
        proc = torchrun(recipe, run, *overrides, "--faults.upload_delay_seconds=1", "--eval.every=0", wait=False,
                        env=s3_server.env)
        try:
            deadline, seen = time.monotonic() + 300, False
            while time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                names = fs.find(f"{ckpts}/step-{STEPS:08d}") if fs.exists(ckpts) else []
                if any(n.endswith(".pt") for n in names) and not any(n.endswith("run_state.json") for n in names):
                    seen = True
                    break
                time.sleep(0.1)
            assert seen, "never saw the final checkpoint's upload under way"
            assert fs.cat_file(f"{ckpts}/latest").decode() == "step-00000004"
            os.kill(rank_pid_of(proc.pid, 1), signal.SIGKILL)
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode != 0
        fs.copy(f"{bucket}/runs/killed", f"{bucket}/runs/killed-copy", recursive=True)
    return run, f"s3://{bucket}/runs/killed-copy"


@pytest.mark.timeout(600)
def test_kill_9_of_a_rank_during_an_upload_resumes_from_the_previous_latest_bitwise(recipe, bucket_data, killed_run,
                                                                                   local_whole, s3):
    """Also: training from shards in a bucket gives the local losses bit for bit (2 ranks)."""
    bucket, overrides = bucket_data
    run, _ = killed_run
    fs = s3fs_client()
    ckpts = f"{bucket}/runs/killed/checkpoints"
    assert fs.cat_file(f"{ckpts}/latest").decode() == "step-00000004"  # the previous one stays in force
    assert not fs.exists(f"{ckpts}/step-{STEPS:08d}/run_state.json")
    res = torchrun(recipe, run, *overrides, "--eval.every=0", env=s3.env)
    assert "starting at step 4" in res.stdout
    assert f"final checkpoint {run}/checkpoints/step-{STEPS:08d}" in res.stdout
    assert losses_in_bucket(run) == step_losses(local_whole)  # every step, bit for bit
    assert sorted(losses_in_bucket(run)) == list(range(1, STEPS + 1))  # steps are counted from 1
    assert fs.cat_file(f"{ckpts}/latest").decode() == f"step-{STEPS:08d}"
    for step in (4, 8):  # keep_last=2: both stay, each complete; the partial upload was replaced
        names = {p.rsplit("/", 1)[1] for p in fs.find(f"{ckpts}/step-{step:08d}")}
        assert {"run_state.json", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names
    # generate/eval/export read weights from the URI: the same tensors as the local run's
    remote_model, _ = load_model(run)
    local_model, _ = load_model(local_whole)
    a, b = remote_model.state_dict(), local_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # export and import, each from a URI to a URI: the weights come back unchanged
    assert cli_main(["export", run, f"s3://{bucket}/exported", "--dtype", "fp32", "--no-verify"]) == 0
    assert fs.exists(f"{bucket}/exported/config.json") and fs.exists(f"{bucket}/exported/tokenizer.json")
    assert cli_main(["import", f"s3://{bucket}/exported", f"s3://{bucket}/imported"]) == 0
    c = load_model(f"s3://{bucket}/imported")[0].state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.timeout(600)
def test_training_from_a_bucket_gives_the_local_losses_bitwise_on_1_rank(recipe, bucket_data, s3, tmp_path):
    _, overrides = bucket_data
    short = ["--train.steps=3", "--eval.every=0", "--checkpoint.every=0"]
    torchrun(recipe, tmp_path / "one-remote", *overrides, *short, nproc=1, env=s3.env)
    torchrun(recipe, tmp_path / "one-local", *short, nproc=1)
    assert step_losses(tmp_path / "one-remote") == step_losses(tmp_path / "one-local")
    assert len(step_losses(tmp_path / "one-local")) == 3


@pytest.mark.timeout(600)
def test_a_run_stopped_on_2_ranks_resumes_on_1_from_the_bucket(recipe, bucket_data, killed_run, local_whole, s3):
    """The killed run's bucket as it was (step 4 by 2 ranks, a partial step 8), resumed on 1 rank."""
    bucket, overrides = bucket_data
    _, run = killed_run
    res = torchrun(recipe, run, *overrides, "--eval.every=0", nproc=1, env=s3.env)
    assert "(written by 2 ranks) through its universal form" in res.stdout
    got, whole = losses_in_bucket(run), step_losses(local_whole)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(whole[step], abs=1e-5), (step, got[step], whole[step])
    # the universal copy is in the bucket (its source, step 4, is one of the keep_last=2 kept)
    assert s3fs_client().exists(f"{bucket}/runs/killed-copy/checkpoints/universal/step-00000004/universal.json")
