"""Preference data (VRPO / DPO): (prompt, chosen, rejected) records -> a cache -> exact batches.

Input: jsonl (or json / parquet / a saved `datasets` dataset) records with `{"prompt": text}` or
`{"messages": [...]}` (ending with a user turn) and `chosen` and `rejected` answers, each a text
or a list of messages ending with the assistant's (the conversational form of TRL's datasets).
The prompt is the chat template plus the assistant header (data/prompts.py: prompt_messages),
each answer its text followed by end-of-turn, exactly as SFT formats a (history, answer) pair.

Cache (`llada-ds pref-data`): per split, the tokens of every pair (prompt, chosen, rejected, one
after the other) as one shard of the pre-training format, `pairs.npy`, an int64 table of
(record, token offset, prompt length, chosen length, rejected length) per pair, and
`preference.json` with the table's checksum (SFT's table machinery, data/sft.py).

Batches: global sample g is pair global_order(g) of epoch g div n (the data order of SFT); a
global batch is sorted by length and cut into micro-batches of m pairs dealt round-robin to the
ranks (data/sft.py: sorted_chunks), so the micro-batches do not depend on the number of ranks.
A micro-batch holds 2m rows, the m prompt + chosen sequences, then the m prompt + rejected ones,
right-padded with EOS to the longest; the padding is a separate attention segment (doc_ids 0,
real tokens 1), so an answer's likelihood does not depend on the rows it is batched with. A
row's sample index names its answer: 2 g for the chosen answer of global pair g, 2 g + 1 for the
rejected one (it keys the answer's noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import DataError, DataStateError
from .batch import CountedBatches, MicroBatch, split_batch
from .build import split_of
from .chat import encode_chat
from .order import global_order
from .prompts import prompt_messages, read_records
from .shards import TokenizerInfo
from .sft import read_table_cache, sorted_chunks, write_table_cache
from .storage import LocalStorage
from .tokenizer import Tokenizer

PAIRS = "pairs.npy"
META = "preference.json"


def answer_text(value, where: str) -> str:
    """An answer given as text, or as messages whose last one is the assistant's."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant" \
            and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise DataError(f"{where}: an answer must be a text or a list of messages ending with the assistant's")


def build_preference_cache(inputs: list[str], tokenizer_dir: str, out_dir: str, val_fraction: float = 0.02,
                           split_seed: int = 0, max_len: int = 4096) -> dict[str, int]:
    """Tokenize preference pairs once into train/validation caches; returns pairs per split."""
    tok = Tokenizer.load(tokenizer_dir)
    eot = tok.special.eot
    rows: dict[str, list] = {"train": [], "validation": []}
    tokens: dict[str, list] = {"train": [], "validation": []}
    offsets = {"train": 0, "validation": 0}
    for r, (where, record) in enumerate(read_records(inputs)):
        missing = [k for k in ("chosen", "rejected") if k not in record]
        if missing:
            raise DataError(f"{where}: no {' or '.join(repr(k) for k in missing)} (fields: {', '.join(record)})")
        prompt = encode_chat(tok, prompt_messages(record, where), add_generation_prompt=True)
        chosen = tok.encode(answer_text(record["chosen"], f"{where} (chosen)")) + [eot]
        rejected = tok.encode(answer_text(record["rejected"], f"{where} (rejected)")) + [eot]
        longest = len(prompt) + max(len(chosen), len(rejected))
        if longest > max_len:
            raise DataError(f"{where}: a sequence of {longest} tokens exceeds max_len={max_len}")
        split = split_of(r, val_fraction, split_seed)
        rows[split].append((r, offsets[split], len(prompt), len(chosen), len(rejected)))
        tokens[split].append(np.asarray(prompt + chosen + rejected, dtype=np.uint32))
        offsets[split] += len(prompt) + len(chosen) + len(rejected)
    info = TokenizerInfo(tok.fingerprint, tok.vocab_size, tok.special.eos)
    out = {}
    for split in ("train", "validation"):
        if not rows[split]:
            raise DataError(f"preference split {split} received no pairs (val_fraction {val_fraction})")
        write_table_cache(LocalStorage(Path(out_dir) / split), info, np.asarray(rows[split], dtype=np.int64),
                          tokens[split], PAIRS, META, {"kind": "preference", "pairs": len(rows[split])})
        out[split] = len(rows[split])
    return out


class PreferenceData:
    """One split of a preference cache."""

    def __init__(self, path: str, tokenizer_fingerprint: Optional[str] = None, verify: str = "full") -> None:
        self.shards, self.table, _, self.fingerprint = read_table_cache(path, PAIRS, META, "llada-ds pref-data",
                                                                        tokenizer_fingerprint, verify)
        self.eos = self.shards.eos_id

    def __len__(self) -> int:
        return len(self.table)

    def pair(self, row: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """(prompt + chosen, prompt length, prompt + rejected): the two sequences of a pair."""
        _, offset, p, c, r = (int(v) for v in self.table[row])
        seq = self.shards.read(offset, p + c + r)
        return seq[: p + c], p, np.concatenate([seq[:p], seq[p + c :]])

    def length(self, rows) -> list[int]:
        """The longer sequence of each pair (what a micro-batch is padded to)."""
        t = self.table[rows]
        return (t[:, 2] + np.maximum(t[:, 3], t[:, 4])).tolist()

    def validation_micro_batches(self, samples: int, micro_batch: int, seq_len: int, rank: int = 0,
                                 world: int = 1) -> Iterator[MicroBatch]:
        """Rank `rank`'s share of the fixed validation batches: the first n pairs (n = min(samples,
        pairs) rounded down to a multiple of world x micro batch), sorted by length, cut into
        micro-batches, dealt round-robin. A pair's row is its sample index (it keys the noise)."""
        n = min(samples, len(self.table)) // (world * micro_batch) * (world * micro_batch)
        rows = list(range(n))
        for chunk in sorted_chunks(rows, self.length(rows) if n else [], micro_batch, rank, world):
            yield collate_pairs(self, [rows[i] for i in chunk], [rows[i] for i in chunk], seq_len)


def collate_pairs(data: PreferenceData, rows: list[int], indices: list[int], seq_len: int) -> MicroBatch:
    """m pairs (`indices`: their sample indices) -> one micro-batch of 2m rows (chosen, then rejected),
    EOS-padded, padding in its own attention segment."""
    pairs = [data.pair(r) for r in rows]
    seqs = [c for c, _, _ in pairs] + [r for _, _, r in pairs]
    prompt = torch.tensor([p for _, p, _ in pairs] * 2)
    longest = max(len(s) for s in seqs)
    if longest > seq_len:
        raise DataStateError(f"a preference pair of {longest} tokens exceeds data.seq_len={seq_len}")
    tokens = torch.full((len(seqs), longest), data.eos, dtype=torch.long)
    valid = torch.zeros((len(seqs), longest), dtype=torch.long)
    for j, s in enumerate(seqs):
        tokens[j, : len(s)] = torch.from_numpy(s)
        valid[j, : len(s)] = 1
    padding = int(tokens.numel() - valid.sum())
    answers = [2 * g for g in indices] + [2 * g + 1 for g in indices]
    return MicroBatch(tokens, answers, doc_ids=valid if padding else None, prompt_lengths=prompt, padding=padding)


class PreferenceBatches(CountedBatches):
    """The preference micro-batches of rank `rank` of `world` at each step; same interface as
    loader.DistributedBatches (step, state, resume_step, accumulation). Batch sizes count pairs."""

    def __init__(self, data: PreferenceData, global_batch: int, micro_batch: int, seed: int, seq_len: int,
                 rank: int = 0, world: int = 1) -> None:
        self.accumulation = split_batch(global_batch, micro_batch, world)
        self.data, self.global_batch, self.micro_batch, self.seed, self.seq_len = data, global_batch, micro_batch, seed, seq_len
        self.rank, self.world = rank, world

    def step(self, step: int) -> list[MicroBatch]:
        indices = list(range(step * self.global_batch, (step + 1) * self.global_batch))
        rows = global_order(np.array(indices, dtype=np.int64), len(self.data), self.seed).tolist()
        chunks = sorted_chunks(indices, self.data.length(rows), self.micro_batch, self.rank, self.world)
        return [collate_pairs(self.data, [rows[i] for i in chunk], [indices[i] for i in chunk], self.seq_len)
                for chunk in chunks]
