"""The Ray job on a real Ray cluster: `ray job submit`, Ray Train V2, 2 CPU workers, ZeRO-3, gloo.

The cluster runs in a loopback-only network namespace made by tests/ray_cluster.py (Ray must not
reach any other address on these machines); it is torn down, with every process in it, after the
module. Jobs write run directories under the test's tmp dir, which the workers share with us.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llada_ds.train.checkpoint import LATEST

from ray_cluster import LoopbackRayCluster, netns_available
from helpers import step_losses
from s3_server import S3_ENV

REPO = Path(__file__).resolve().parents[2]
STEPS = 12

why_not = netns_available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=f"Ray tests need a network namespace: {why_not}")

# Workers see a failed peer within half a second (Ray's default is 2 s); one thread per rank. The S3
# server of the object-storage test runs inside the namespace, on its loopback (S3_PORT).
S3_PORT = 45999
CLUSTER_ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
               "RAY_DEDUP_LOGS": "0", **S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}"}


@pytest.fixture(scope="module")
def cluster():
    with LoopbackRayCluster(head_cpus=2, env=CLUSTER_ENV) as c:
        yield c


def entry(recipe: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "cluster/train.py", "--recipe", str(recipe), "--storage", str(storage), "--name", name,
            *extra]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"))


def submit_ok(cluster: LoopbackRayCluster, cmd: list[str], job_id: str) -> str:
    res = cluster.submit(cmd, REPO, job_id)
    info = cluster.job_status(job_id)
    assert res.returncode == 0 and info["exit_code"] == 0, (res.stdout[-4000:], res.stderr[-2000:], info["status"])
    return info["logs"]


@pytest.fixture(scope="module")
def uninterrupted(cluster, recipe, tmp_path_factory):
    """A 2-worker job that nothing disturbs: the reference for the fault and resize tests."""
    storage = tmp_path_factory.mktemp("ray_runs")
    logs = submit_ok(cluster, entry(recipe, storage, "whole", "--workers", "2"), "whole")
    return storage / "whole", logs


@pytest.mark.timeout(600)
def test_a_submitted_job_trains_to_its_target_step_and_exits_zero(uninterrupted):
    run, logs = uninterrupted
    assert (run / "checkpoints" / LATEST).read_text() == f"step-{STEPS:08d}"
    assert sorted(step_losses(run)) == list(range(1, STEPS + 1))
    assert "2 rank(s) on cpu" in logs and f"done at step {STEPS} of {STEPS} on 2 worker(s)" in logs


@pytest.mark.timeout(300)
def test_a_bad_recipe_makes_the_job_fail_with_the_reason_in_its_logs(cluster, recipe, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("global_batch: 8", "global_batch: -8"))
    res = cluster.submit(entry(bad, tmp_path, "bad", "--workers", "2"), REPO, "bad-recipe")
    info = cluster.job_status("bad-recipe")
    assert res.returncode != 0 and "FAILED" in info["status"]
    assert info["exit_code"] == 2
    assert "global_batch" in info["logs"]
    # A worker count that cannot split the global batch is refused before anything starts.
    res = cluster.submit(entry(recipe, tmp_path, "three", "--workers", "3:4"), REPO, "bad-workers")
    info = cluster.job_status("bad-workers")
    assert info["exit_code"] == 2 and "cannot be split over 3 worker(s)" in info["logs"]
    missing = tmp_path / "missing.yaml"
    missing.write_text(recipe.read_text().replace(str(recipe.parent / "shards" / "train"), str(tmp_path / "nowhere")))
    cluster.submit(entry(missing, tmp_path, "missing", "--workers", "2"), REPO, "missing-data")
    info = cluster.job_status("missing-data")
    assert info["exit_code"] == 2 and f"data.train={tmp_path / 'nowhere'}: no such file" in info["logs"]


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_run_is_restarted_and_the_result_is_bitwise_unchanged(cluster, recipe, uninterrupted,
                                                                                  tmp_path):
    kill_at = random.randint(2, STEPS - 3)  # any step: the result must not depend on it
    run = tmp_path / "killed"
    job = cluster.submit(entry(recipe, tmp_path, "killed", "--workers", "2"), REPO, "killed", wait=False)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (run / "metrics.jsonl").is_file() and max(step_losses(run), default=-1) >= kill_at:
                break
            assert job.poll() is None, job.stdout.read()[-4000:]
            time.sleep(0.2)
        pid = json.loads((run / "workers" / "rank-1.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        out, _ = job.communicate(timeout=400)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    info = cluster.job_status("killed")
    assert info["exit_code"] == 0, (kill_at, out[-4000:])
    assert (run / "train.log").read_text().count("llada-ds: ") == 2, f"expected one restart (killed at {kill_at})"
    whole, killed = final_weights(uninterrupted[0]), final_weights(run)
    assert whole.keys() == killed.keys()
    assert all(torch.equal(whole[k], killed[k]) for k in whole), f"weights differ (killed at step {kill_at})"


@pytest.mark.timeout(900)
def test_resizing_2_to_1_to_2_workers_continues_the_same_run(cluster, recipe, uninterrupted, tmp_path):
    run = tmp_path / "resized"
    submit_ok(cluster, entry(recipe, tmp_path, "resized", "--workers", "2", "--stop-after", "4"), "resize-a")
    logs = submit_ok(cluster, entry(recipe, tmp_path, "resized", "--workers", "1", "--stop-after", "4"), "resize-b")
    assert "(written by 2 ranks) through its universal form" in logs
    logs = submit_ok(cluster, entry(recipe, tmp_path, "resized", "--workers", "2"), "resize-c")
    assert "step-00000008 (written by 1 ranks) through its universal form" in logs
    whole, resized = step_losses(uninterrupted[0]), step_losses(run)
    assert sorted(resized) == list(range(1, STEPS + 1))
    for step in resized:
        assert resized[step] == pytest.approx(whole[step], abs=1e-5), (step, resized[step], whole[step])


@pytest.mark.timeout(900)
def test_a_node_that_joins_then_dies_makes_the_job_scale_down_and_finish(recipe, tmp_path):
    """Head with 1 CPU + a second node with 1 CPU; `--workers 1:2`; the second node is killed."""
    steps = 24
    with LoopbackRayCluster(head_cpus=1, env=CLUSTER_ENV) as c:
        node = c.add_node(cpus=1, label="node2")
        run = tmp_path / "elastic"
        job = c.submit(entry(recipe, tmp_path, "elastic", "--workers", "1:2", "--resize-interval", "5",
                             f"--train.steps={steps}"), REPO, "elastic", wait=False)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # both workers training and a checkpoint to go back to
                if (run / "checkpoints" / LATEST).is_file() and (run / "workers" / "rank-1.json").is_file():
                    break
                assert job.poll() is None, job.stdout.read()[-4000:]
                time.sleep(0.5)
            assert json.loads((run / "workers" / "rank-1.json").read_text())["world_size"] == 2
            ranks = [json.loads((run / "workers" / f"rank-{r}.json").read_text())["pid"] for r in range(2)]
            on_node = set(ranks) & set(c.descendants(node.pid))
            assert len(on_node) == 1, (ranks, "one training worker must run on the second node")
            c.kill_node(node)  # the raylet, its agents and that worker
            out, _ = job.communicate(timeout=500)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
        info = c.job_status("elastic")
        assert info["exit_code"] == 0, out[-4000:]
        tail = info["logs"][-6000:]
        assert "(written by 2 ranks) through its universal form" in info["logs"], tail
        assert f"done at step {steps} of {steps} on 1 worker(s)" in info["logs"], tail
        assert sorted(step_losses(run)) == list(range(1, steps + 1))  # steps are counted from 1


def in_namespace(cluster: LoopbackRayCluster, code: str, *args: str) -> str:
    """Run Python inside the cluster's namespace (where the S3 server is reachable); its stdout."""
    res = subprocess.run(cluster.exec_cmd([sys.executable, "-c", code, *args]), env=cluster.env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def bucket_in_cluster(cluster, recipe, tmp_path_factory):
    """A real S3 server (moto's) inside the namespace, a bucket with the recipe's shards and tokenizer;
    the overrides that point a job there. The cluster's teardown ends the server with the namespace."""
    import yaml

    subprocess.Popen(cluster.exec_cmd([sys.executable, str(REPO / "tests" / "s3_server.py"), str(S3_PORT)]),
                     env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    data = yaml.safe_load(recipe.read_text())["data"]
    code = ("import sys, time, fsspec; fs = fsspec.filesystem('s3')\n"
            "for i in range(60):\n"
            "    try: fs.mkdir('raybucket'); break\n"
            "    except OSError: time.sleep(1)\n"
            "for key, path in zip(('train', 'validation', 'tokenizer'), sys.argv[1:]):\n"
            "    fs.put(path + '/', 'raybucket/' + key + '/', recursive=True)\n"
            "print(len(fs.find('raybucket')))")
    assert int(in_namespace(cluster, code, data["train"], data["validation"], data["tokenizer"]))
    staging = tmp_path_factory.mktemp("ray_staging")  # the workers' local disk for checkpoint files
    return "raybucket", [f"--data.{k}=s3://raybucket/{k}" for k in ("train", "validation", "tokenizer")] + \
        [f"--checkpoint.local_dir={staging}"]


WAIT_FOR_CHECKPOINT = (
    "import sys, time, fsspec; fs = fsspec.filesystem('s3', use_listings_cache=False); run = sys.argv[1]\n"
    "deadline = time.monotonic() + 300\n"
    "while not fs.exists(run + '/checkpoints/latest') and time.monotonic() < deadline: time.sleep(0.2)\n"
    "print(fs.cat_file(run + '/workers/rank-1.json').decode())")
READ = "import sys, fsspec; fs = fsspec.filesystem('s3'); p = sys.argv[1]; print(fs.cat_file(p).decode() if fs.exists(p) else '')"


@pytest.mark.timeout(900)
def test_a_job_with_its_run_dir_in_a_bucket_survives_a_killed_worker(cluster, recipe, uninterrupted, bucket_in_cluster):
    """--storage s3://...: nothing of the run on a shared path; a worker SIGKILLed after the first
    checkpoint; the job restarts from the bucket and ends with the undisturbed job's losses."""
    bucket, overrides = bucket_in_cluster
    run = f"{bucket}/runs/s3job"
    job = cluster.submit(entry(recipe, f"s3://{bucket}/runs", "s3job", "--workers", "2", *overrides), REPO, "s3job",
                         wait=False)
    try:
        # One poller inside the namespace: once the first checkpoint is published, the pid of rank 1.
        found = in_namespace(cluster, WAIT_FOR_CHECKPOINT, run)
        assert found.strip() and job.poll() is None, (found, cluster.job_status("s3job")["logs"][-5000:])
        pid = json.loads(found)["pid"]
        os.kill(pid, signal.SIGKILL)
        out, _ = job.communicate(timeout=500)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    info = cluster.job_status("s3job")
    assert info["exit_code"] == 0, out[-4000:]
    assert f"done at step {STEPS} of {STEPS} on 2 worker(s); checkpoint s3://{run}/checkpoints/step-{STEPS:08d}" \
        in info["logs"]
    assert in_namespace(cluster, READ, f"{run}/train.log").count("llada-ds: ") == 2  # one restart
    got = {}
    for line in in_namespace(cluster, READ, f"{run}/metrics.jsonl").strip().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            got[rec["step"]] = rec["loss"]
    assert got == step_losses(uninterrupted[0])  # bit for bit, as the local job's
