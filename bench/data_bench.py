"""Data pipeline throughput, measured side by side in one run.

1. Streaming reader: tokens/s of llada-ds' loader (shuffled windows, vocabulary check, int64
   batches for one rank) on one core, against a raw sequential numpy.memmap read of the same
   shards (the practical ceiling).
2. Shard building: tokens/s of `llada-ds tokenize` (our builder, 1 and 2 worker processes)
   against `datasets.map(batched=True)` with the same tokenizer (1 and 2 processes).

Usage: python bench/data_bench.py [--corpus data/shakespeare/texts] [--seq-len 256]
Prints a table and the ratios. Everything runs on the bundled corpus, on CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llada_ds.data.build import BuildConfig, build_shards, read_documents, resolve_inputs  # noqa: E402
from llada_ds.data.loader import DistributedBatches, WindowDataset  # noqa: E402
from llada_ds.data.shards import HEADER_BYTES, TOKEN_DTYPE, ShardSet  # noqa: E402
from llada_ds.data.storage import LocalStorage  # noqa: E402
from llada_ds.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_reader(shard_dir: Path, seq_len: int, epochs: int) -> tuple[float, float]:
    import torch

    torch.set_num_threads(1)
    shards = ShardSet(LocalStorage(shard_dir), verify="header")

    def ours():
        ds = WindowDataset(shards, seq_len, seed=0)
        batches = DistributedBatches(ds, global_batch=64, micro_batch=16)
        steps = epochs * ds.n_windows // 64
        n = 0
        for step in range(steps):
            for mb in batches.step(step):
                n += mb.tokens.numel()
        return n

    def raw():
        n = 0
        for info in shards.index.shards:
            for _ in range(epochs):
                arr = np.memmap(shard_dir / info.file, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES,
                                shape=(info.tokens,))
                n += int(np.asarray(arr, dtype=np.int64).size)
        return n

    t_ours, n_ours = timed(ours)
    t_raw, n_raw = timed(raw)
    return n_ours / t_ours, n_raw / t_raw


def bench_build(files: list[str], tokenizer: Path, workers: int, scratch: Path) -> float:
    out = scratch / f"build{workers}"

    def run():
        shutil.rmtree(out, ignore_errors=True)
        return sum(build_shards(BuildConfig(inputs=files, out_dir=str(out), tokenizer=str(tokenizer),
                                            val_fraction=0.05, workers=workers, docs_per_task=4),
                                progress_bar=False).values())

    t, n = timed(run, repeat=2)
    return n / t


def bench_datasets_map(files: list[str], tokenizer: Path, num_proc: int) -> float:
    import datasets

    datasets.disable_progress_bars()
    docs = list(read_documents(files))
    ds = datasets.Dataset.from_dict({"text": docs})
    tok = Tokenizer.load(tokenizer)

    def encode(batch):
        return {"ids": tok.encode_batch(batch["text"])}

    def run():
        mapped = ds.map(encode, batched=True, batch_size=4, num_proc=num_proc if num_proc > 1 else None,
                        load_from_cache_file=False, remove_columns=["text"])
        return sum(len(x) + 1 for x in mapped["ids"])  # + EOS per document, as the builder counts

    t, n = timed(run, repeat=2)
    return n / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO / "data" / "shakespeare" / "texts"))
    parser.add_argument("--seq-len", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=4,
                        help="build from the corpus files listed this many times (a bigger input, so that "
                             "worker start-up does not dominate)")
    args = parser.parse_args()
    files = resolve_inputs([args.corpus])
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tok_dir = scratch / "tok"
        train_tokenizer((Path(f).read_text() for f in files), tok_dir, vocab_size=4096)
        big = files * args.repeat
        rows = [(f"llada-ds tokenize, {w} worker(s)", bench_build(big, tok_dir, w, scratch)) for w in (1, 2)]
        rows += [(f"datasets.map(batched=True), {p} proc(s)", bench_datasets_map(big, tok_dir, p)) for p in (1, 2)]
        readers = [(n, *bench_reader(scratch / "build1" / "train", n, args.epochs)) for n in args.seq_len]
    print(f"machine: {os.cpu_count()} CPUs; corpus: {len(files)} files, built {args.repeat}x over")
    print("\nshard building (tokens/s)")
    for name, rate in rows:
        print(f"  {name:<40} {rate:14,.0f}")
    print(f"  ratio ours/datasets.map: 1 proc {rows[0][1] / rows[2][1]:.2f}, 2 procs {rows[1][1] / rows[3][1]:.2f}")
    for seq_len, ours, raw in readers:
        print(f"\nstreaming reader, one core, seq {seq_len}, global batch 64, micro batch 16 (tokens/s)")
        print(f"  {'llada-ds loader (shuffled windows)':<40} {ours:14,.0f}")
        print(f"  {'raw numpy.memmap sequential read':<40} {raw:14,.0f}")
        print(f"  ratio ours/raw: {ours / raw:.3f}")


if __name__ == "__main__":
    main()
