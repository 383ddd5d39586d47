"""Shards in object storage: a real S3-protocol server on loopback (moto's server), reached through
s3fs over HTTP with AWS_ENDPOINT_URL; nothing of the client is mocked.

The reference for every read is the same shard set on local disk."""

from __future__ import annotations

import time

import fsspec
import numpy as np
import pytest

from llada_ds.data.build import BuildConfig, build_shards, is_built
from llada_ds.data.loader import DistributedBatches, WindowDataset
from llada_ds.data.prefetch import Prefetcher
from llada_ds.data.shards import INDEX_NAME, ShardSet, shard_name
from llada_ds.data.storage import is_uri, join, open_storage
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.errors import ShardError, StorageError, TokenizerError
from llada_ds.train.datasets import open_shards
from llada_ds.train.distributed import DistInfo

import torch


def s3fs_client():
    return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)


def bucket_listing(bucket: str) -> dict[str, str]:
    """Every object of a bucket with its ETag: proves that nothing was written or deleted."""
    fs = s3fs_client()
    return {p: info.get("ETag", "") for p, info in fs.find(bucket, detail=True).items()}


@pytest.fixture(scope="module")
def built(shakespeare_texts, sp_tokenizer, tmp_path_factory, s3_server):
    """The same build twice: on local disk, and into a bucket (`llada-ds tokenize --out s3://...`)."""
    local = tmp_path_factory.mktemp("local") / "shards"
    cfg = dict(inputs=[str(p) for p in shakespeare_texts[:4]], tokenizer=str(sp_tokenizer), val_fraction=0.2,
               split_seed=1, shard_tokens=40_000)
    build_shards(BuildConfig(out_dir=str(local), **cfg), progress_bar=False)
    with s3_server.environment():
        bucket = s3_server.bucket("shards")
        remote = f"s3://{bucket}/corpus/shards"
        build_shards(BuildConfig(out_dir=remote, **cfg), progress_bar=False)
    return local, remote, bucket, cfg


def test_uris_keep_their_double_slash():
    assert is_uri("s3://b/p") and is_uri("gs://b") and not is_uri("/x/y") and not is_uri("file:///x")
    assert join("s3://b/p/", "train", "index.json") == "s3://b/p/train/index.json"
    assert join("/x/y", "train") == "/x/y/train"


def test_a_build_into_a_bucket_writes_the_same_bytes_as_a_local_build(built, s3, capsys):
    from llada_ds.cli import main

    local, remote, bucket, _ = built
    assert is_built(remote)
    assert main(["shards", join(remote, "train")]) == 0  # checksums verified through range reads
    assert f"{remote}/train: " in capsys.readouterr().out
    fs = s3fs_client()
    for split in ("train", "validation"):
        files = sorted(p.name for p in (local / split).iterdir())
        assert files and INDEX_NAME in files
        for name in files:
            assert fs.cat_file(f"{bucket}/corpus/shards/{split}/{name}") == (local / split / name).read_bytes(), name


def test_windows_read_from_the_bucket_equal_the_local_ones_with_and_without_prefetch(built, s3):
    local, remote, _, _ = built
    ref = WindowDataset(ShardSet(open_storage(local / "train")), seq_len=64, seed=3)
    shards = ShardSet(open_storage(join(remote, "train")), verify="full")
    assert shards.storage.remote and shards.index.fingerprint == ref.shards.index.fingerprint
    ds = WindowDataset(shards, seq_len=64, seed=3)
    epoch = ds.n_windows // 8
    steps = list(range(6)) + list(range(epoch - 2, epoch + 3))  # into the second epoch
    for rank, world in ((0, 1), (1, 2)):
        want = DistributedBatches(ref, 8, 2, rank, world)
        plain = DistributedBatches(ds, 8, 2, rank, world)
        ahead = DistributedBatches(ds, 8, 2, rank, world, prefetch_steps=3)
        try:
            for step in steps + [2, 1]:  # a jump back, as a recovery makes
                expected = [mb.tokens for mb in want.step(step)]
                for got in (plain.step(step), ahead.step(step)):
                    assert all(torch.equal(a, b.tokens) for a, b in zip(expected, got)), step
        finally:
            ahead.close()
    # a straddling read (two shards) through read()
    n = int(shards.offsets[1])
    assert np.array_equal(shards.read(n - 5, 10), ref.shards.read(n - 5, 10))


def test_prefetcher_returns_exactly_what_the_read_returns_and_raises_its_errors():
    calls = []

    def read(step):
        calls.append(step)
        if step == 7:
            raise ShardError("step 7 is corrupt")
        return step * 10

    p = Prefetcher(read, depth=3)
    try:
        assert [p(s) for s in range(5)] == [0, 10, 20, 30, 40]
        assert p(1) == 10  # a jump back
        with pytest.raises(ShardError, match="step 7 is corrupt"):
            for s in range(1, 9):
                p(s)
    finally:
        p.close()
    assert set(range(9)) <= set(calls)


def test_open_shards_on_a_bucket_reads_only_the_index_listing_and_headers_by_default(built, s3, sp_tokenizer):
    _, remote, _, _ = built
    tok = Tokenizer.load(sp_tokenizer)
    shards = open_shards(join(remote, "train"), "auto", tok, DistInfo(0, 1, 0, torch.device("cpu")))
    # "auto" verified headers only: nothing was read beyond the first 32 bytes of each shard
    assert all(k[1] == 0 and k[2] == 32 for k in shards.storage._cache if k[0].startswith("shard-"))


def test_a_tokenizer_folder_in_a_bucket_loads_like_the_local_one(s3, sp_tokenizer):
    bucket = s3.bucket("tok")
    fs = s3fs_client()
    for f in sp_tokenizer.iterdir():
        fs.put_file(str(f), f"{bucket}/tok/{f.name}")
    assert Tokenizer.load(f"s3://{bucket}/tok").fingerprint == Tokenizer.load(sp_tokenizer).fingerprint
    with pytest.raises(TokenizerError, match=f"s3://{bucket}/nothing: no tokenizer found"):
        Tokenizer.load(f"s3://{bucket}/nothing")


def test_an_interrupted_build_into_a_bucket_resumes_to_the_same_objects(built, s3):
    local, _, _, cfg = built
    bucket = s3.bucket("resume")
    out = f"s3://{bucket}/shards"
    assert build_shards(BuildConfig(out_dir=out, max_shards=2, **cfg), progress_bar=False) == {}
    assert not is_built(out)
    assert not s3fs_client().exists(f"{bucket}/shards/train/{INDEX_NAME}")  # the index comes last
    build_shards(BuildConfig(out_dir=out, **cfg), progress_bar=False)
    fs = s3fs_client()
    for split in ("train", "validation"):
        for f in (local / split).iterdir():
            assert fs.cat_file(f"{bucket}/shards/{split}/{f.name}") == f.read_bytes(), f.name


# -- bad input: a clear error naming the URI, in bounded time, nothing written or deleted --------------

def copy_set(src_local, bucket: str, prefix: str) -> str:
    fs = s3fs_client()
    for f in src_local.iterdir():
        fs.put_file(str(f), f"{bucket}/{prefix}/{f.name}")
    return f"s3://{bucket}/{prefix}"


@pytest.mark.timeout(120)
def test_a_missing_bucket_is_named(built, s3):
    t = time.monotonic()
    with pytest.raises(StorageError, match="s3://no-such-bucket-x: no such bucket"):
        ShardSet(open_storage("s3://no-such-bucket-x/shards/train"))
    with pytest.raises(StorageError, match="s3://no-such-bucket-x: no such bucket"):
        build_shards(BuildConfig(out_dir="s3://no-such-bucket-x/out", **built[3]), progress_bar=False)
    assert time.monotonic() - t < 30


@pytest.mark.timeout(120)
def test_wrong_credentials_are_refused_naming_the_uri_and_never_printed(built, s3):
    local, _, _, _ = built
    bucket = s3.bucket("creds")
    uri = copy_set(local / "train", bucket, "train")
    before = bucket_listing(bucket)
    with s3.authentication(), s3.environment(AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1",
                                             AWS_SECRET_ACCESS_KEY="not-the-secret-0123456789"):
        t = time.monotonic()
        with pytest.raises(StorageError) as err:
            ShardSet(open_storage(uri))
        assert time.monotonic() - t < 30
    message = str(err.value)
    assert uri in message and "access denied" in message
    assert "not-the-secret" not in message and "AKIAWRONGWRONGWRONG1" not in message
    assert bucket_listing(bucket) == before


@pytest.mark.timeout(120)
def test_a_truncated_shard_object_is_refused_naming_it(built, s3):
    local, _, _, _ = built
    bucket = s3.bucket("trunc")
    uri = copy_set(local / "train", bucket, "train")
    fs = s3fs_client()
    name = f"{bucket}/train/{shard_name(1)}"
    fs.pipe_file(name, fs.cat_file(name)[:-100])
    before = bucket_listing(bucket)
    with pytest.raises(ShardError, match=f"{uri}/{shard_name(1)}: .* truncated or corrupt"):
        ShardSet(open_storage(uri))
    assert bucket_listing(bucket) == before


@pytest.mark.timeout(120)
def test_an_altered_shard_object_is_refused_naming_it(built, s3):
    local, _, _, _ = built
    bucket = s3.bucket("altered")
    uri = copy_set(local / "train", bucket, "train")
    fs = s3fs_client()
    name = f"{bucket}/train/{shard_name(0)}"
    data = bytearray(fs.cat_file(name))
    data[1000:1004] = np.array([7], dtype="<u4").tobytes()  # a valid token: only the checksum sees it
    fs.pipe_file(name, bytes(data))
    before = bucket_listing(bucket)
    with pytest.raises(ShardError, match=f"{uri}/{shard_name(0)}: checksum mismatch"):
        ShardSet(open_storage(uri), verify="full")
    data[0:8] = b"NOTASHRD"  # a header that is not ours: refused by the default (header) check too
    fs.pipe_file(name, bytes(data))
    with pytest.raises(ShardError, match=f"{uri}/{shard_name(0)}: not a llada-ds shard"):
        ShardSet(open_storage(uri), verify="auto")
    data[0:8] = (local / "train" / shard_name(0)).read_bytes()[:8]
    data[2000:2004] = np.array([2**31], dtype="<u4").tobytes()  # garbage: refused when read
    fs.pipe_file(name, bytes(data))
    shards = ShardSet(open_storage(uri), verify="auto")
    with pytest.raises(ShardError, match=f"{uri}/{shard_name(0)}: token 2147483648 at token offset"):
        shards.read(0, 1000)
    assert set(bucket_listing(bucket)) == set(before)


@pytest.mark.timeout(180)
def test_an_unreachable_endpoint_fails_in_bounded_time_naming_the_uri(s3):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with s3.environment(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}"):
        t = time.monotonic()
        with pytest.raises(StorageError, match="s3://some-bucket/shards/train"):
            ShardSet(open_storage("s3://some-bucket/shards/train"))
        elapsed = time.monotonic() - t
    assert elapsed < 90, elapsed
