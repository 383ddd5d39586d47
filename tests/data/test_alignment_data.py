"""Preference caches (llada-ds pref-data) and prompt caches (llada-ds prompt-data): formats, batches,
errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llada_ds.cli import main as llada_ds
from llada_ds.data.batch import DataState
from llada_ds.data.chat import encode_chat
from llada_ds.data.preference import PreferenceBatches, PreferenceData, build_preference_cache
from llada_ds.data.prompts import RECORDS, PromptBatches, PromptData, build_prompt_cache
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.errors import BatchSplitError, DataError, DataStateError, ShardError


def pairs(n: int = 30) -> list[dict]:
    out = []
    for i in range(n):
        prompt = {"prompt": f"What is {i} + {i}?"} if i % 2 else {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} + {i}?"}]}
        out.append({**prompt, "chosen": f"{2 * i}" + " indeed" * (i % 4), "rejected": f"{2 * i + 1}"})
    return out


def conversational(records: list[dict]) -> list[dict]:
    """The same pairs with answers as messages (TRL's conversational form)."""
    return [{**r, "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": r["rejected"]}]}
            for r in records]


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_preference_cache_holds_chat_formatted_prompts_and_answers(sp_tokenizer, tmp_path):
    records = pairs(20) + conversational(pairs(30)[20:])  # one file of text answers, one of messages
    assert llada_ds(["pref-data", "--input", write(tmp_path / "p1.jsonl", records[:20]),
                     write(tmp_path / "p2.jsonl", records[20:]), "--tokenizer", str(sp_tokenizer),
                     "--out", str(tmp_path / "pref"), "--val-fraction", "0.2"]) == 0
    tok = Tokenizer.load(sp_tokenizer)
    train, val = PreferenceData(str(tmp_path / "pref" / "train"), tok.fingerprint), PreferenceData(str(tmp_path / "pref" / "validation"))
    assert len(train) + len(val) == len(records) and len(val) > 0
    for row in range(len(train)):
        r = records[int(train.table[row, 0])]
        chosen, p, rejected = train.pair(row)
        messages = r.get("messages") or [{"role": "user", "content": r["prompt"]}]
        assert chosen[:p].tolist() == encode_chat(tok, messages, add_generation_prompt=True)
        text = {k: r[k] if isinstance(r[k], str) else r[k][-1]["content"] for k in ("chosen", "rejected")}
        assert chosen[p:].tolist() == tok.encode(text["chosen"]) + [tok.special.eot]
        assert rejected[:p].tolist() == chosen[:p].tolist()
        assert rejected[p:].tolist() == tok.encode(text["rejected"]) + [tok.special.eot]


def test_preference_micro_batches_do_not_depend_on_the_number_of_ranks(sp_tokenizer, tmp_path):
    build_preference_cache([write(tmp_path / "p.jsonl", pairs())], str(sp_tokenizer), str(tmp_path / "pref"), 0.1)
    data = PreferenceData(str(tmp_path / "pref" / "train"))
    one = PreferenceBatches(data, 8, 2, seed=3, seq_len=64).step(5)
    two = [PreferenceBatches(data, 8, 2, seed=3, seq_len=64, rank=r, world=2).step(5) for r in (0, 1)]
    assert sorted(tuple(mb.sample_indices) for mb in one) == sorted(tuple(mb.sample_indices) for r in two for mb in r)
    for mb in one:
        m = mb.tokens.shape[0] // 2
        assert mb.sample_indices[:m] == [a - 1 for a in mb.sample_indices[m:]] and all(a % 2 == 0 for a in mb.sample_indices[:m])
        assert 40 <= mb.sample_indices[0] // 2 < 48  # step 5's global pairs
        if mb.doc_ids is not None:
            assert int((mb.doc_ids == 0).sum()) == mb.padding
            assert bool((mb.tokens[mb.doc_ids == 0] == data.eos).all())
    twice = PreferenceBatches(data, 8, 2, seed=3, seq_len=64).step(5)
    assert all(a.tokens.equal(b.tokens) for a, b in zip(one, twice))


def test_bad_preference_records_are_named(sp_tokenizer, tmp_path):
    cases = [({"prompt": "a", "chosen": "b"}, "no 'rejected'"),
             ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
               "chosen": "c", "rejected": "d"}, "must end with a user turn"),
             ({"prompt": "a", "chosen": 3, "rejected": "d"}, "an answer must be a text"),
             ({"chosen": "c", "rejected": "d"}, "needs a text 'prompt'")]
    for i, (record, message) in enumerate(cases):
        path = write(tmp_path / f"bad{i}.jsonl", [record])
        with pytest.raises(DataError, match=message) as info:
            build_preference_cache([path], str(sp_tokenizer), str(tmp_path / f"out{i}"), 0.0)
        assert f"bad{i}.jsonl: record 0" in str(info.value)


def prompts(n: int = 20) -> list[dict]:
    return [{"prompt": f"Copy: {i} {i + 1}", "answer": f"{i} {i + 1}", "id": i} for i in range(n)]


def test_prompt_cache_keeps_every_record_and_checks_them(sp_tokenizer, tmp_path):
    records = prompts()
    assert llada_ds(["prompt-data", "--input", write(tmp_path / "q.jsonl", records), "--tokenizer", str(sp_tokenizer),
                     "--out", str(tmp_path / "prompts")]) == 0
    tok = Tokenizer.load(sp_tokenizer)
    data = PromptData(str(tmp_path / "prompts" / "train"), tok.fingerprint)
    assert data.records == records and data.texts == [r["prompt"] for r in records]
    assert data.prompt(7) == encode_chat(tok, [{"role": "user", "content": records[7]["prompt"]}],
                                         add_generation_prompt=True)
    path = tmp_path / "prompts" / "train" / RECORDS
    path.write_text(path.read_text().replace('"answer": "3 4"', '"answer": "3 5"'))
    with pytest.raises(ShardError, match="checksum"):
        PromptData(str(tmp_path / "prompts" / "train"))


def test_prompt_batches_split_whole_prompts_over_ranks(sp_tokenizer, tmp_path):
    build_prompt_cache([write(tmp_path / "q.jsonl", prompts())], str(sp_tokenizer), str(tmp_path / "prompts"))
    data = PromptData(str(tmp_path / "prompts" / "train"))
    # 16 completions of G = 4: 4 prompts per step; 2 per rank on 2 ranks
    one = PromptBatches(data, 16, 4, 4, seed=1, seq_len=64, gen_length=8).step(6)[0]
    ranks = [PromptBatches(data, 16, 4, 4, seed=1, seq_len=64, gen_length=8, rank=r, world=2).step(6)[0] for r in (0, 1)]
    assert one.indices == list(range(24, 28)) and ranks[0].indices + ranks[1].indices == one.indices
    assert ranks[0].prompts + ranks[1].prompts == one.prompts and ranks[0].records + ranks[1].records == one.records
    epoch = [PromptBatches(data, 16, 4, 4, seed=1, seq_len=64, gen_length=8).step(s)[0] for s in range(5)]
    assert sorted(r["id"] for b in epoch for r in b.records) == list(range(20))  # one epoch: every prompt once
    with pytest.raises(BatchSplitError, match="grpo.generations"):
        PromptBatches(data, 16, 2, 4, seed=1, seq_len=64, gen_length=8, world=8)
    with pytest.raises(DataError, match="grpo.gen_length"):
        PromptBatches(data, 16, 4, 4, seed=1, seq_len=30, gen_length=16)
    assert np.all(data.table[:, 2] > 0)


def test_a_resume_continues_where_the_data_stopped_and_refuses_another_global_batch(sp_tokenizer, tmp_path):
    build_preference_cache([write(tmp_path / "p.jsonl", pairs())], str(sp_tokenizer), str(tmp_path / "pref"), 0.1)
    build_prompt_cache([write(tmp_path / "q.jsonl", prompts())], str(sp_tokenizer), str(tmp_path / "prompts"))
    pref = PreferenceData(str(tmp_path / "pref" / "train"))
    prompt_data = PromptData(str(tmp_path / "prompts" / "train"))
    for make in (lambda batch: PreferenceBatches(pref, batch, 2, seed=3, seq_len=64),
                 lambda batch: PromptBatches(prompt_data, batch, 4, 4, seed=1, seq_len=64, gen_length=8)):
        saved = DataState.from_dict(make(8).state(5).to_dict())  # as stored in a checkpoint after 5 steps
        assert saved.global_batch == 8 and make(8).resume_step(saved, 5) == 5
        with pytest.raises(DataStateError, match="train.global_batch=8"):
            make(16).resume_step(saved, 5)
