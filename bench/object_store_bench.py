"""Object storage: the shard loader from an S3 server vs local disk, and checkpoint saves with a
background upload vs a blocking one.

The S3 server is moto's standalone server in its own process on loopback (a real HTTP endpoint,
reached through s3fs with AWS_ENDPOINT_URL), so the figures are those of this machine's loopback
and of a Python server: a cloud store has more latency per request and more bandwidth in total.

1. Loader, seq 4096, global batch 32 on one rank (random windows, as training reads them):
   tokens/s of the loader alone for local disk (memory map), the bucket without prefetching and
   the bucket with the prefetcher (data.prefetch_steps); then the same inside a loop whose
   "training step" takes a fixed time (--step-ms), which is where prefetching is meant to hide
   the requests: the loop's tokens/s and the data wait per step.
2. Checkpoint save of a ~30M-parameter ZeRO-3 model (one rank, fp32 weights and Adam moments):
   the training stall per save with the background upload (what RemoteRun.save blocks on: the
   local write) against a blocking save (local write + upload + publication), and a save to
   local disk for reference.

Usage: python bench/object_store_bench.py [--tokens 16000000] [--steps 40] [--step-ms 500] [--saves 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SERVER = ("import logging, sys, time; from moto.server import ThreadedMotoServer; "
          "logging.getLogger('werkzeug').setLevel(logging.ERROR); "
          "ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False).start(); "
          "print('ready', flush=True); time.sleep(10**6)")


def start_server() -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    return proc


def loader_bench(tmp: Path, tokens: int, steps: int, step_ms: float) -> None:
    import fsspec

    from llada_ds.data.loader import DistributedBatches, WindowDataset
    from llada_ds.data.shards import ShardSet, TokenizerInfo, write_index, write_shard
    from llada_ds.data.storage import open_storage

    seq, batch = 4096, 32
    rng = np.random.default_rng(0)
    local = open_storage(tmp / "shards")
    per_shard = 4 * 2**20
    infos = [write_shard(local, i, rng.integers(3, 32000, min(per_shard, tokens - i * per_shard), dtype=np.uint32), 1)
             for i in range(-(-tokens // per_shard))]
    write_index(local, TokenizerInfo("bench", 32000, 2), infos)
    fs = fsspec.filesystem("s3")
    fs.mkdir("bench")
    fs.put(str(tmp / "shards") + "/", "bench/shards/", recursive=True)

    def make(location: str, prefetch: int) -> DistributedBatches:
        return DistributedBatches(WindowDataset(ShardSet(open_storage(location), verify="header"), seq, 0), batch,
                                  batch, prefetch_steps=prefetch)

    cases = [("local disk", str(tmp / "shards"), 0), ("bucket, no prefetch", "s3://bench/shards", 0),
             ("bucket, prefetch 4", "s3://bench/shards", 4)]
    print(f"loader: seq {seq}, {batch} windows per step, {steps} steps, {tokens:,} tokens in {len(infos)} shards")
    for label, location, prefetch in cases:
        for compute in (0.0, step_ms / 1000):
            b = make(location, prefetch)
            b.step(0)  # warm: opens, first requests
            wait, start = 0.0, time.perf_counter()
            for s in range(1, steps + 1):
                t = time.perf_counter()
                b.step(s)
                wait += time.perf_counter() - t
                if compute:
                    time.sleep(compute)  # the training step the reads should hide behind
            total = time.perf_counter() - start
            b.close()
            what = "loader alone" if not compute else f"with a {step_ms:g} ms step"
            print(f"  {label:22s} {what:22s} {steps * batch * seq / total / 1e6:8.2f} M tokens/s, "
                  f"data wait {1000 * wait / steps:7.1f} ms/step")


def checkpoint_bench(tmp: Path, saves: int) -> None:
    import torch

    from llada_ds.config import RunConfig
    from llada_ds.train.checkpoint import save_checkpoint
    from llada_ds.train.distributed import init_distributed
    from llada_ds.train.engine import build_engine, default_ds_config, fill_ds_config, load_ds_config
    from llada_ds.train.remote_run import RemoteRun

    cfg = RunConfig()
    cfg.model.overrides = {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8, "ffn_hidden_size": 1408,
                           "max_seq_len": 256, "vocab_size": 4096}
    cfg.train.precision, cfg.train.global_batch, cfg.train.micro_batch = "fp32", 1, 1
    dist = init_distributed()
    engine, _ = build_engine(cfg, cfg.model.build(), fill_ds_config(load_ds_config(default_ds_config()), cfg, 1))
    x = torch.randint(0, 4096, (1, 64))
    engine.backward(engine(x).float().mean())  # one step: Adam moments exist
    engine.step()
    params = sum(p.ds_numel for p in engine.module.parameters())
    state = {"step": 0, "model": cfg.model.build().to_dict()}
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.mkdir("ckpt")
    remote = RemoteRun("s3://ckpt/run", str(tmp / "stage"), dist)
    local_s, background, blocking, upload_wait = [], [], [], []
    for i in range(saves):
        # Each timed save starts with no dirty pages of the previous one (writeback would slow it).
        os.sync()
        t = time.perf_counter()
        save_checkpoint(engine, tmp / "local" / "checkpoints", i + 1, state, dist, keep_last=2)
        local_s.append(time.perf_counter() - t)
        os.sync()
        t = time.perf_counter()
        remote.save(engine, 2 * i + 1, state, keep_last=2)
        background.append(time.perf_counter() - t)
        t = time.perf_counter()
        remote.flush()  # here a real run trains on; the bench waits to keep saves apart
        upload_wait.append(time.perf_counter() - t)
        os.sync()
        t = time.perf_counter()
        remote.save(engine, 2 * i + 2, state, keep_last=2)
        remote.flush()
        blocking.append(time.perf_counter() - t)
    last = tmp / "local" / "checkpoints" / f"step-{saves:08d}"
    size = sum(p.stat().st_size for p in last.rglob("*") if p.is_file()) / 2**20
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"checkpoint: {params:,} parameters, ~{size:.0f} MiB per save, {saves} saves each, median seconds")
    print(f"  local disk save                          {med(local_s):6.2f} s")
    print(f"  bucket, background upload: training stall {med(background):6.2f} s "
          f"(upload + publish then run {med(upload_wait):.2f} s behind it)")
    print(f"  bucket, blocking upload:   training stall {med(blocking):6.2f} s "
          f"({med(blocking) / med(background):.1f}x the background stall)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16_000_000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-ms", type=float, default=500.0)
    p.add_argument("--saves", type=int, default=3)
    p.add_argument("--skip-checkpoint", action="store_true")
    p.add_argument("--skip-loader", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    server = start_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not args.skip_loader:
                loader_bench(Path(tmp), args.tokens, args.steps, args.step_ms)
            if not args.skip_checkpoint:
                checkpoint_bench(Path(tmp), args.saves)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
