"""Instruction-tuning (SFT) data: conversations -> cached token shards -> exact, bucketed batches.

Input: jsonl (or json / parquet / a saved `datasets` dataset) records with
`{"messages": [{"role": ..., "content": ...}, ...]}`. A dialogue with n assistant turns gives n
(history, answer) pairs; the prompt is the chat template of the history plus the assistant header,
the answer is the assistant's text followed by end-of-turn. Each epoch uses one pair per dialogue,
chosen by a keyed hash of (seed, epoch, dialogue), so the order stays a pure function of the seed
and the global sample index.

Cache (`llada-ds sft-data`): per split, a shard set of the same format as pre-training (the pairs'
tokens, prompt then answer, one "document" each) plus `pairs.npy`, an int64 table of
(dialogue, token offset, prompt length, total length) per pair, its checksum in `sft.json`.

Batches: the B samples of a global batch are sorted by length and cut into micro-batches of m, so
similar lengths share a micro-batch (little EOS padding); rank r of W takes micro-batches r, r+W,
... The micro-batches themselves do not depend on W, so neither do the losses: LLaDA's SFT loss
normalises by each sample's answer length including its EOS padding, which depends on its
micro-batch. Each micro-batch is padded with EOS to its longest sample (the padding is trained on,
as the spec says).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import DataError, DataStateError, ShardError
from ..keys import noise_key
from .batch import CountedBatches, MicroBatch, split_batch
from .build import open_records, resolve_inputs, split_of
from .chat import encode_chat
from .order import global_order
from .shards import ShardSet, TokenizerInfo, write_index, write_shard
from .storage import LocalStorage, open_storage
from .tokenizer import Tokenizer

PAIRS = "pairs.npy"
META = "sft.json"
STREAM_SFT_PAIR = 33


def pairs_of(messages: list[dict]) -> list[tuple[list[dict], str]]:
    """(history, answer) for every assistant turn."""
    return [(messages[:i], m["content"]) for i, m in enumerate(messages) if m["role"] == "assistant"]


def read_dialogues(files: list[str]) -> Iterator[list[dict]]:
    """The `messages` of every record, in input order."""
    for path in resolve_inputs(files):
        for i, record in enumerate(open_records(path)):
            if "messages" not in record:
                raise DataError(f"{path}: record {i} has no 'messages' (fields: {', '.join(record)})")
            yield record["messages"]


def build_sft_cache(inputs: list[str], tokenizer_dir: str, out_dir: str, val_fraction: float = 0.02,
                    split_seed: int = 0, max_len: int = 4096) -> dict[str, int]:
    """Tokenize conversations once into train/validation SFT caches; returns pairs per split."""
    tok = Tokenizer.load(tokenizer_dir)
    eot = tok.special.eot
    rows = {"train": [], "validation": []}
    tokens = {"train": [], "validation": []}
    counts = {"train": 0, "validation": 0}
    for d, messages in enumerate(read_dialogues(inputs)):
        split = split_of(d, val_fraction, split_seed)
        for history, answer in pairs_of(messages):
            prompt = encode_chat(tok, history, add_generation_prompt=True)
            full = prompt + tok.encode(answer) + [eot]
            if len(full) > max_len:
                raise DataError(f"dialogue {d}: a pair of {len(full)} tokens exceeds max_len={max_len}")
            rows[split].append((d, counts[split], len(prompt), len(full)))  # dialogue, offset, prompt, length
            tokens[split].append(np.asarray(full, dtype=np.uint32))
            counts[split] += len(full)
    out = Path(out_dir)
    info = TokenizerInfo(tok.fingerprint, tok.vocab_size, tok.special.eos)
    result = {}
    for split in ("train", "validation"):
        if not rows[split]:
            raise DataError(f"SFT split {split} received no pairs (val_fraction {val_fraction})")
        table = np.asarray(rows[split], dtype=np.int64)
        write_table_cache(LocalStorage(out / split), info, table, tokens[split], PAIRS, META,
                          {"kind": "sft", "pairs": len(table), "dialogues": int(len(np.unique(table[:, 0])))})
        result[split] = len(table)
    return result


def write_table_cache(storage: LocalStorage, info: TokenizerInfo, table: np.ndarray, tokens: list[np.ndarray],
                      table_name: str, meta_name: str, meta: dict) -> None:
    """One split of a tokenized cache: the samples' tokens as one shard (one "document" per
    sample), an int64 table locating them, and a metadata file carrying the table's checksum.
    The index is written last, so a split with an index is complete."""
    shard = write_shard(storage, 0, np.concatenate(tokens), len(table))
    buf = io.BytesIO()
    np.save(buf, table)
    storage.write_atomic(table_name, buf.getvalue())
    storage.write_atomic(meta_name, (json.dumps({**meta, "pairs_sha256": hashlib.sha256(buf.getvalue()).hexdigest()})
                                     + "\n").encode())
    write_index(storage, info, [shard])


def read_table_cache(path: str, table_name: str, meta_name: str, builder: str,
                     tokenizer_fingerprint: Optional[str] = None,
                     verify: str = "full") -> tuple[ShardSet, np.ndarray, dict, str]:
    """(shards, table, metadata, fingerprint) of a split written by write_table_cache, checked;
    `builder` names the command that writes such a cache (for the error of a wrong directory)."""
    storage = open_storage(path)
    shards = ShardSet(storage, verify=verify, tokenizer_fingerprint=tokenizer_fingerprint)
    if not storage.exists(meta_name):
        raise ShardError(f"{storage.describe(meta_name)}: not the cache this run needs (build it with {builder})")
    meta = json.loads(storage.read_bytes(meta_name))
    raw = storage.read_bytes(table_name)
    if hashlib.sha256(raw).hexdigest() != meta["pairs_sha256"]:
        raise ShardError(f"{storage.describe(table_name)}: checksum mismatch")
    fingerprint = hashlib.sha256((shards.index.fingerprint + meta["pairs_sha256"]).encode()).hexdigest()[:16]
    return shards, np.load(io.BytesIO(raw)), meta, fingerprint


class SFTData:
    """One split of an SFT cache: pairs grouped by dialogue, read from the token shards."""

    def __init__(self, path: str, tokenizer_fingerprint: Optional[str] = None, verify: str = "full") -> None:
        self.shards, self.table, _, self.fingerprint = read_table_cache(path, PAIRS, META, "llada-ds sft-data",
                                                                        tokenizer_fingerprint, verify)
        dialogues, starts = np.unique(self.table[:, 0], return_index=True)
        self.dialogue_start = starts
        self.dialogue_count = np.diff(np.append(starts, len(self.table)))
        self.n_dialogues = len(dialogues)
        self.eos = self.shards.eos_id

    def pairs_for(self, indices: np.ndarray, seed: int) -> np.ndarray:
        """The pairs (rows of the table) global samples `indices` train on: sample g takes dialogue
        global_order(g) of epoch g div n_dialogues, and that dialogue's pair keyed by (seed, epoch)."""
        indices = np.asarray(indices, dtype=np.int64)
        dialogues = global_order(indices, self.n_dialogues, seed)
        epochs = indices // self.n_dialogues
        k = np.fromiter((noise_key(seed, STREAM_SFT_PAIR, int(e), int(d)) % int(self.dialogue_count[d])
                         for e, d in zip(epochs, dialogues)), dtype=np.int64, count=len(indices))
        return self.dialogue_start[dialogues].astype(np.int64) + k

    def pair_for(self, g: int, seed: int) -> int:
        """The pair (row of the table) global sample g trains on."""
        return int(self.pairs_for(np.array([g]), seed)[0])

    def sample(self, row: int) -> tuple[np.ndarray, int]:
        _, offset, prompt_len, length = (int(v) for v in self.table[row])
        return self.shards.read(offset, length), prompt_len

    def validation_micro_batches(self, samples: int, micro_batch: int, seq_len: int, rank: int = 0,
                                 world: int = 1) -> Iterator[MicroBatch]:
        """Rank `rank`'s share of the fixed validation batches: the first n pairs (n = min(samples,
        pairs) rounded down to a multiple of world x micro batch so every rank runs the same number
        of forwards), sorted by length, cut into micro-batches of m, dealt round-robin to the ranks.
        A pair's row in the table is its sample index (it keys the evaluation noise)."""
        n = min(samples, len(self.table)) // (world * micro_batch) * (world * micro_batch)
        rows = sorted(range(n), key=lambda r: (int(self.table[r, 3]), r))
        for chunk in [rows[i : i + micro_batch] for i in range(0, n, micro_batch)][rank::world]:
            yield pad_micro_batch([self.sample(r) for r in chunk], chunk, self.eos, seq_len)


def sorted_chunks(indices: list[int], lengths: list[int], micro_batch: int, rank: int, world: int) -> list[list[int]]:
    """Rank `rank`'s micro-batches of a global batch, as positions in it: the samples sorted by
    (length, global index), cut into micro-batches of `micro_batch`, dealt round-robin to the
    ranks, so that the micro-batches themselves do not depend on the number of ranks."""
    order = sorted(range(len(indices)), key=lambda i: (lengths[i], indices[i]))
    chunks = [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]
    return chunks[rank::world]


def pad_micro_batch(samples: list[tuple[np.ndarray, int]], indices: list[int], eos: int,
                    seq_len: int) -> MicroBatch:
    """(tokens, prompt length) samples -> one micro-batch, EOS-padded to its longest (at most seq_len)."""
    longest = min(max(len(t) for t, _ in samples), seq_len)
    tokens = torch.full((len(samples), longest), eos, dtype=torch.long)
    for j, (t, _) in enumerate(samples):
        t = t[:longest]
        tokens[j, : len(t)] = torch.from_numpy(t)
    prompt = torch.tensor([p for _, p in samples])
    if bool((prompt >= longest).any()):
        raise DataStateError(f"a prompt of {int(prompt.max())} tokens leaves no answer at data.seq_len={seq_len}")
    padding = int(tokens.numel() - sum(min(len(t), longest) for t, _ in samples))
    return MicroBatch(tokens, list(indices), prompt_lengths=prompt, padding=padding)


class SFTBatches(CountedBatches):
    """The SFT micro-batches of rank `rank` of `world` at each step; same interface as
    loader.DistributedBatches (step, state, resume_step, accumulation)."""

    def __init__(self, data: SFTData, global_batch: int, micro_batch: int, seed: int, seq_len: int,
                 rank: int = 0, world: int = 1) -> None:
        self.accumulation = split_batch(global_batch, micro_batch, world)
        self.data, self.global_batch, self.micro_batch, self.seed, self.seq_len = data, global_batch, micro_batch, seed, seq_len
        self.rank, self.world = rank, world

    def step(self, step: int) -> list[MicroBatch]:
        indices = list(range(step * self.global_batch, (step + 1) * self.global_batch))
        rows = self.data.pairs_for(np.array(indices), self.seed).tolist()  # one vectorised lookup per step
        chunks = sorted_chunks(indices, self.data.table[rows, 3].tolist(), self.micro_batch, self.rank, self.world)
        return [pad_micro_batch([self.data.sample(rows[i]) for i in chunk], [indices[i] for i in chunk],
                                self.data.eos, self.seq_len)
                for chunk in chunks]

