"""Streaming reader: exact global order across world sizes and resumes, and clear errors."""

import json

import numpy as np
import pytest
import torch

from llada_ds.data.loader import DataStateError, DistributedBatches, WindowDataset, doc_ids_from_eos
from llada_ds.data.order import global_order, shuffled
from llada_ds.data.shards import (
    INDEX_NAME, ShardError, ShardSet, TokenizerInfo, shard_name, write_index, write_shard,
)
from llada_ds.data.storage import LocalStorage

VOCAB, EOS = 1000, 2
TOK = TokenizerInfo(fingerprint="tok-abc", vocab_size=VOCAB, eos_id=EOS)


def make_set(root, n_shards=3, docs_per_shard=7, seed=0):
    """Shards of random documents, each followed by EOS; returns the concatenated stream."""
    rng = np.random.default_rng(seed)
    storage = LocalStorage(root)
    infos, stream = [], []
    for i in range(n_shards):
        docs = [np.append(rng.integers(3, VOCAB, rng.integers(5, 60)), EOS) for _ in range(docs_per_shard)]
        tokens = np.concatenate(docs)
        infos.append(write_shard(storage, i, tokens, docs_per_shard))
        stream.append(tokens)
    write_index(storage, TOK, infos)
    return storage, np.concatenate(stream)


def test_order_is_a_permutation_for_every_size_and_differs_by_epoch():
    for n in list(range(1, 130)) + [4097, 10_000]:
        assert sorted(shuffled(np.arange(n), n, 5, 0).tolist()) == list(range(n))
    a, b = shuffled(np.arange(500), 500, 5, 0), shuffled(np.arange(500), 500, 5, 1)
    assert (a == b).mean() < 0.05
    assert abs(np.corrcoef(a, np.arange(500))[0, 1]) < 0.2
    assert np.array_equal(shuffled(np.array([7, 3]), 500, 5, 0), a[[7, 3]])


def test_global_order_matches_the_per_index_formula():
    # Global index g is shuffled(g mod n) of epoch g div n, however the indices are grouped.
    for n in (1, 7, 64, 500):
        indices = np.concatenate([np.arange(3 * n + 5), np.array([10 * n + 3, 2, 5 * n, 0])])
        expected = [int(shuffled(np.array([g % n]), n, 9, g // n)[0]) for g in indices.tolist()]
        assert global_order(indices, n, 9).tolist() == expected
        assert global_order(indices[::-1], n, 9).tolist() == expected[::-1]
    assert global_order(np.array([], dtype=np.int64), 5, 9).tolist() == []
    with pytest.raises(ValueError, match="cannot order 0 items"):
        global_order(np.arange(3), 0, 9)


def test_reader_returns_the_concatenated_stream_across_shard_boundaries(tmp_path):
    storage, stream = make_set(tmp_path)
    shards = ShardSet(storage)
    assert shards.total_tokens == stream.size
    for start, length in [(0, 10), (stream.size - 5, 5), (shards.offsets[1] - 3, 50), (0, stream.size)]:
        assert np.array_equal(shards.read(int(start), int(length)), stream[start : start + length])


def global_sequence(batches_by_rank, steps):
    """Interleave what each rank reads per step back into the global order."""
    seq = []
    for step in steps:
        for b in batches_by_rank:
            for mb in b.step(step):
                seq.extend(zip(mb.sample_indices, [tuple(r) for r in mb.tokens.tolist()]))
    return seq


def test_world_sizes_1_2_4_read_the_same_global_sequence(tmp_path):
    storage, stream = make_set(tmp_path)
    ds = WindowDataset(ShardSet(storage), seq_len=16, seed=3)
    # 8 samples a step, ~4 epochs over the windows.
    steps = range(0, 4 * ds.n_windows // 8)
    ref = global_sequence([DistributedBatches(ds, 8, 8, 0, 1)], steps)
    for world, micro in ((2, 2), (4, 1), (4, 2)):
        got = global_sequence([DistributedBatches(ds, 8, micro, r, world) for r in range(world)], steps)
        assert got == ref, (world, micro)
    # Global sample g is window shuffled(g mod n) of its epoch, read straight from the stream.
    g = 8 * len(steps) - 1
    epoch, pos = divmod(g, ds.n_windows)
    w = int(shuffled(np.array([pos]), ds.n_windows, 3, epoch)[0])
    assert ref[-1] == (g, tuple(stream[w * 16 : (w + 1) * 16].tolist()))
    # Each epoch visits every window exactly once.
    first_epoch = [tokens for g, tokens in ref[: ds.n_windows]]
    expected = {tuple(stream[w * 16 : (w + 1) * 16].tolist()) for w in range(ds.n_windows)}
    assert set(first_epoch) == expected and len(set(first_epoch)) == ds.n_windows


def test_stop_on_4_ranks_resume_on_2_continues_exactly(tmp_path):
    storage, _ = make_set(tmp_path)
    ds = WindowDataset(ShardSet(storage), seq_len=16, seed=3)
    ref = global_sequence([DistributedBatches(ds, 8, 8, 0, 1)], range(12))
    four = [DistributedBatches(ds, 8, 1, r, 4) for r in range(4)]
    before = global_sequence(four, range(5))
    state = four[0].state(steps_done=5)
    # A fresh process: new objects, only the saved dict survives.
    restored = type(state).from_dict(json.loads(json.dumps(state.to_dict())))
    two = [DistributedBatches(WindowDataset(ShardSet(storage), 16, 3), 8, 2, r, 2) for r in range(2)]
    start = two[0].resume_step(restored)
    assert start == 5
    after = global_sequence(two, range(start, 12))
    assert before + after == ref


def test_resume_refuses_other_data_seed_or_batch(tmp_path):
    storage, _ = make_set(tmp_path / "a")
    other, _ = make_set(tmp_path / "b", seed=1)
    ds = WindowDataset(ShardSet(storage), 16, 3)
    state = DistributedBatches(ds, 8, 8).state(3)
    with pytest.raises(DataStateError, match="data_fingerprint"):
        DistributedBatches(WindowDataset(ShardSet(other), 16, 3), 8, 8).resume_step(state)
    with pytest.raises(DataStateError, match="seed"):
        DistributedBatches(WindowDataset(ShardSet(storage), 16, 4), 8, 8).resume_step(state)
    with pytest.raises(DataStateError, match="global batch"):
        DistributedBatches(ds, 16, 8).resume_step(type(state)(24 + 4, 3, 16, state.data_fingerprint))
    with pytest.raises(DataStateError, match="not divisible by world size 3"):
        DistributedBatches(ds, 8, 1, 0, 3)


def test_doc_ids_follow_eos():
    tokens = torch.tensor([[5, 6, EOS, 7, EOS, 8]])
    assert doc_ids_from_eos(tokens, EOS).tolist() == [[0, 0, 0, 1, 1, 2]]
    assert doc_ids_from_eos(tokens.numpy(), EOS).tolist() == [[0, 0, 0, 1, 1, 2]]


def test_document_masking_batches_carry_doc_ids(tmp_path):
    storage, _ = make_set(tmp_path)
    ds = WindowDataset(ShardSet(storage), 32, 0)
    mb = DistributedBatches(ds, 4, 2, document_masking=True).step(0)[0]
    assert torch.equal(mb.doc_ids, doc_ids_from_eos(mb.tokens, EOS))


# ---- corruption: each gives a clear error naming the file, and changes nothing on disk ----

def _corrupt_and_check(tmp_path, corrupt, match, **open_kwargs):
    storage, _ = make_set(tmp_path)
    corrupt(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ShardError, match=match):
        ShardSet(storage, **open_kwargs)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def _truncate(root):
    p = root / shard_name(1)
    p.write_bytes(p.read_bytes()[:-8])


def _flip_token(root):
    p = root / shard_name(2)
    data = bytearray(p.read_bytes())
    data[40] ^= 0x01
    p.write_bytes(bytes(data))


def _bad_magic(root):
    p = root / shard_name(0)
    p.write_bytes(b"NOTASHRD" + p.read_bytes()[8:])


def _bad_version(root):
    idx = json.loads((root / INDEX_NAME).read_text())
    idx["version"] = 99
    (root / INDEX_NAME).write_text(json.dumps(idx))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda r: (r / shard_name(1)).unlink(), r"shard-00001\.bin: shard listed in the index is missing"),
        (_truncate, r"shard-00001\.bin: .* truncated or corrupt"),
        (_flip_token, r"shard-00002\.bin: checksum mismatch"),
        (_bad_magic, r"shard-00000\.bin: not a llada-ds shard"),
        (_bad_version, r"index\.json: format version 99"),
        (lambda r: (r / INDEX_NAME).unlink(), r"index\.json: no shard index"),
    ],
)
def test_corruptions_are_refused_with_the_file_name(tmp_path, corrupt, match):
    _corrupt_and_check(tmp_path, corrupt, match)


def test_header_only_verification_misses_flips_but_catches_truncation(tmp_path):
    storage, _ = make_set(tmp_path)
    _flip_token(tmp_path)
    ShardSet(storage, verify="header")  # a flipped bit needs the checksum
    _truncate(tmp_path)
    with pytest.raises(ShardError, match="truncated"):
        ShardSet(storage, verify="header")


def test_tokenizer_mismatch_is_refused(tmp_path):
    storage, _ = make_set(tmp_path)
    with pytest.raises(ShardError, match="built with tokenizer tok-abc, but this run uses tokenizer other"):
        ShardSet(storage, tokenizer_fingerprint="other")


def test_token_outside_the_vocabulary_names_shard_and_offset(tmp_path):
    storage = LocalStorage(tmp_path)
    infos = [write_shard(storage, 0, np.array([5, 6, EOS]), 1),
             write_shard(storage, 1, np.array([7, VOCAB + 5, EOS]), 1)]
    write_index(storage, TOK, infos)
    shards = ShardSet(storage)
    assert shards.read(0, 3).tolist() == [5, 6, EOS]
    with pytest.raises(ShardError, match=r"shard-00001\.bin: token 1005 at token offset 1 is outside"):
        shards.read(2, 3)


def test_window_reads_match_plain_reads_and_check_the_vocabulary(tmp_path):
    storage, stream = make_set(tmp_path)
    shards = ShardSet(storage)
    starts = np.array([0, 5, shards.offsets[1] - 4, shards.offsets[2] - 1, stream.size - 12])
    rows = shards.read_windows(starts, 12)
    assert np.array_equal(rows, np.stack([stream[s : s + 12] for s in starts]))
    infos = [write_shard(LocalStorage(tmp_path / "bad"), 0, np.array([5, 6, EOS, 7, VOCAB, EOS, 9, 9]), 2)]
    write_index(LocalStorage(tmp_path / "bad"), TOK, infos)
    bad = ShardSet(LocalStorage(tmp_path / "bad"))
    with pytest.raises(ShardError, match=r"shard-00000\.bin: token 1000 at token offset 4"):
        bad.read_windows(np.array([0, 2]), 3)
