"""SFT data: pairs from dialogues, cached shards, world-size-independent bucketed batches."""

import json

import numpy as np
import pytest

from helpers import dialogues

from llada_ds.data.chat import encode_chat
from llada_ds.data.sft import SFTBatches, SFTData, build_sft_cache, pairs_of
from llada_ds.data.tokenizer import Tokenizer


@pytest.fixture()
def cache(tmp_path, sp_tokenizer):
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in dialogues()))
    counts = build_sft_cache([str(path)], str(sp_tokenizer), str(tmp_path / "sft"), val_fraction=0.2, split_seed=1)
    return tmp_path / "sft", counts


def test_pairs_cover_every_assistant_turn():
    msgs = dialogues()[2]["messages"]  # three exchanges
    pairs = pairs_of(msgs)
    assert [len(h) for h, _ in pairs] == [1, 3, 5]
    assert [a for _, a in pairs] == [m["content"] for m in msgs if m["role"] == "assistant"]


def test_cache_holds_prompt_then_answer_with_end_of_turn(cache, sp_tokenizer):
    path, counts = cache
    tok = Tokenizer.load(sp_tokenizer)
    data = SFTData(str(path / "train"), tok.fingerprint)
    assert len(data.table) == counts["train"] and data.n_dialogues < counts["train"]
    tokens, prompt_len = data.sample(0)
    d = int(data.table[0, 0])
    history, answer = pairs_of(dialogues()[d]["messages"])[0]
    assert tokens.tolist() == encode_chat(tok, history, add_generation_prompt=True) + tok.encode(answer) + [tok.special.eot]
    assert prompt_len == len(encode_chat(tok, history, add_generation_prompt=True))


def test_one_pair_per_dialogue_per_epoch_and_keyed(cache, sp_tokenizer):
    path, _ = cache
    data = SFTData(str(path / "train"), Tokenizer.load(sp_tokenizer).fingerprint)
    n = data.n_dialogues
    epoch0 = [data.pair_for(g, seed=5) for g in range(n)]
    assert sorted({int(data.table[r, 0]) for r in epoch0}) == sorted(set(data.table[:, 0].tolist()))  # each once
    assert epoch0 == [data.pair_for(g, seed=5) for g in range(n)]
    epochs = [[data.pair_for(g + e * n, seed=5) for g in range(n)] for e in range(6)]
    assert len({tuple(sorted(e)) for e in epochs}) > 1  # multi-turn dialogues vary their pair by epoch


def test_vectorised_pair_lookup_matches_the_per_sample_formula(cache, sp_tokenizer):
    from llada_ds.data.order import shuffled
    from llada_ds.data.sft import STREAM_SFT_PAIR
    from llada_ds.keys import noise_key

    path, _ = cache
    data = SFTData(str(path / "train"), Tokenizer.load(sp_tokenizer).fingerprint)
    n = data.n_dialogues

    def by_hand(g, seed):
        epoch, pos = divmod(g, n)
        d = int(shuffled(np.array([pos]), n, seed, epoch)[0])
        return int(data.dialogue_start[d]) + noise_key(seed, STREAM_SFT_PAIR, epoch, d) % int(data.dialogue_count[d])

    indices = list(range(3 * n + 4)) + [7 * n + 1, 0]  # several epochs in one call, out of order
    assert data.pairs_for(np.array(indices), 5).tolist() == [by_hand(g, 5) for g in indices]
    assert [data.pair_for(g, 5) for g in indices] == [by_hand(g, 5) for g in indices]


def test_micro_batches_do_not_depend_on_the_world_size(cache, sp_tokenizer):
    path, _ = cache
    data = SFTData(str(path / "train"), Tokenizer.load(sp_tokenizer).fingerprint)

    def everything(world):
        seen = []
        for step in range(3):
            for rank in range(world):
                for mb in SFTBatches(data, 8, 2, seed=0, seq_len=256, rank=rank, world=world).step(step):
                    seen.append((tuple(mb.sample_indices), mb.tokens.tolist(), mb.prompt_lengths.tolist()))
        return sorted(seen)

    assert everything(1) == everything(2) == everything(4)
    mbs = SFTBatches(data, 8, 2, seed=0, seq_len=256).step(0)
    for mb in mbs:  # EOS padding after the answer, counted
        lengths = [int(data.table[data.pair_for(g, 0), 3]) for g in mb.sample_indices]
        assert mb.tokens.shape[1] == max(lengths) and mb.padding == sum(max(lengths) - x for x in lengths)
    # Bucketing by length: less padding than batching in sample order.
    sorted_pad = sum(mb.padding for mb in mbs)
    rows = [data.pair_for(g, 0) for g in range(8)]
    lens = [int(data.table[r, 3]) for r in rows]
    plain_pad = sum(max(lens[i:i + 2]) * 2 - sum(lens[i:i + 2]) for i in range(0, 8, 2))
    assert sorted_pad <= plain_pad


def test_corrupt_pair_table_is_refused(cache, sp_tokenizer):
    from llada_ds.data.shards import ShardError

    path, _ = cache
    table = path / "train" / "pairs.npy"
    data = bytearray(table.read_bytes())
    data[-1] ^= 1
    table.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"pairs\.npy: checksum mismatch"):
        SFTData(str(path / "train"))


def test_missing_messages_field_is_named(tmp_path, sp_tokenizer):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 0 has no 'messages'"):
        build_sft_cache([str(tmp_path / "bad.jsonl")], str(sp_tokenizer), str(tmp_path / "out"))
