"""Prompts for reinforcement learning (GRPO): records -> cached chat-formatted prompts + the records.

Input: jsonl (or json / parquet / a saved `datasets` dataset) records with `{"prompt": text}` or
`{"messages": [...]}` (the conversation so far, ending with a user turn), plus any fields the
reward function reads (the built-in exact-match reward reads `answer`). The prompt is the chat
template of the conversation plus the assistant header, as for SFT (data/chat.py).

Cache (`llada-ds prompt-data`): per split, the prompts' tokens as one shard of the pre-training
format, `prompts.npy`, an int64 table of (record, token offset, prompt length) per prompt, and
`records.jsonl`, every record as read (the reward's `example`); `prompts.json` carries both
checksums. The table machinery is SFT's (data/sft.py: write_table_cache, read_table_cache).

Batches: a GRPO step draws P = global batch / G prompts (G completions each): global prompts
[s P, (s + 1) P), prompt g being record global_order(g) of epoch g div n (the Feistel order of
the pre-training and SFT data), so the order is a pure function of (seed, step); rank r of W
takes its contiguous share of P / W prompts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import BatchSplitError, DataError, ShardError
from .batch import CountedBatches, split_batch
from .build import open_records, resolve_inputs, split_of
from .chat import encode_chat
from .order import global_order
from .shards import TokenizerInfo
from .sft import read_table_cache, write_table_cache
from .storage import LocalStorage, open_storage
from .tokenizer import Tokenizer

TABLE = "prompts.npy"
META = "prompts.json"
RECORDS = "records.jsonl"


def prompt_messages(record: dict, where: str) -> list[dict]:
    """The conversation a record asks the model to continue: `prompt` as one user turn, or
    `messages` (which must end with a user turn)."""
    if isinstance(record.get("prompt"), str):
        return [{"role": "user", "content": record["prompt"]}]
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        if not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
            raise DataError(f"{where}: 'messages' must end with a user turn (the prompt to answer)")
        return list(messages)
    raise DataError(f"{where}: needs a text 'prompt' or a non-empty 'messages' list (fields: {', '.join(record)})")


def prompt_text(messages: list[dict]) -> str:
    """The last user turn's text: what a reward function sees as the prompt."""
    return messages[-1]["content"]


def read_records(inputs: list[str]) -> Iterator[tuple[str, dict]]:
    """(where, record) of every record of the inputs, in input order."""
    for path in resolve_inputs(inputs):
        for i, record in enumerate(open_records(path)):
            yield f"{path}: record {i}", record


def build_prompt_cache(inputs: list[str], tokenizer_dir: str, out_dir: str, val_fraction: float = 0.0,
                       split_seed: int = 0, max_len: int = 4096) -> dict[str, int]:
    """Tokenize prompts once into train (and, with val_fraction > 0, validation) caches; returns
    prompts per split."""
    tok = Tokenizer.load(tokenizer_dir)
    splits = ("train", "validation") if val_fraction > 0 else ("train",)
    rows: dict[str, list] = {s: [] for s in splits}
    tokens: dict[str, list] = {s: [] for s in splits}
    records: dict[str, list] = {s: [] for s in splits}
    offsets = {s: 0 for s in splits}
    for r, (where, record) in enumerate(read_records(inputs)):
        split = split_of(r, val_fraction, split_seed) if val_fraction > 0 else "train"
        ids = encode_chat(tok, prompt_messages(record, where), add_generation_prompt=True)
        if len(ids) > max_len:
            raise DataError(f"{where}: a prompt of {len(ids)} tokens exceeds max_len={max_len}")
        rows[split].append((r, offsets[split], len(ids)))
        tokens[split].append(np.asarray(ids, dtype=np.uint32))
        records[split].append(json.dumps(record, default=str))
        offsets[split] += len(ids)
    info = TokenizerInfo(tok.fingerprint, tok.vocab_size, tok.special.eos)
    out = {}
    for split in splits:
        if not rows[split]:
            raise DataError(f"prompt split {split} received no prompts (val_fraction {val_fraction})")
        storage = LocalStorage(Path(out_dir) / split)
        raw = ("\n".join(records[split]) + "\n").encode()
        storage.write_atomic(RECORDS, raw)  # before the index: a split with an index is complete
        write_table_cache(storage, info, np.asarray(rows[split], dtype=np.int64), tokens[split], TABLE, META,
                          {"kind": "prompts", "prompts": len(rows[split]),
                           "records_sha256": hashlib.sha256(raw).hexdigest()})
        out[split] = len(rows[split])
    return out


class PromptData:
    """One split of a prompt cache: the prompts' tokens and their records."""

    def __init__(self, path: str, tokenizer_fingerprint: Optional[str] = None, verify: str = "full") -> None:
        self.shards, self.table, meta, self.fingerprint = read_table_cache(path, TABLE, META, "llada-ds prompt-data",
                                                                           tokenizer_fingerprint, verify)
        storage = open_storage(path)
        raw = storage.read_bytes(RECORDS)
        if hashlib.sha256(raw).hexdigest() != meta.get("records_sha256"):
            raise ShardError(f"{storage.describe(RECORDS)}: checksum mismatch")
        self.records = [json.loads(line) for line in raw.decode().splitlines()]
        self.texts = [prompt_text(prompt_messages(r, f"{path}: record {i}")) for i, r in enumerate(self.records)]

    def __len__(self) -> int:
        return len(self.table)

    def prompt(self, row: int) -> list[int]:
        _, offset, length = (int(v) for v in self.table[row])
        return self.shards.read(offset, length).tolist()


@dataclass
class PromptBatch:
    """A rank's prompts of one step, for the GRPO objective's rollouts."""

    prompts: list[list[int]]  # chat-formatted token ids
    indices: list[int]  # global prompt index of each (keys the rollout noise)
    texts: list[str]  # the last user turn (what a reward function sees as the prompt)
    records: list[dict]  # the records as read (a reward function's `example`)

    def to(self, device) -> "PromptBatch":
        return self  # token lists: the objective puts them on its device itself


class PromptBatches(CountedBatches):
    """The prompts of rank `rank` of `world` at each step; same interface as loader.DistributedBatches
    (step, state, resume_step, accumulation). global_batch counts completions (prompts x G)."""

    def __init__(self, data: PromptData, global_batch: int, micro_batch: int, generations: int, seed: int,
                 seq_len: int, gen_length: int, rank: int = 0, world: int = 1) -> None:
        self.accumulation = split_batch(global_batch, micro_batch, world)
        if generations <= 0 or global_batch % (generations * world):
            raise BatchSplitError(
                f"train.global_batch={global_batch} completions must be a multiple of grpo.generations={generations} "
                f"x world size {world}: every rank samples all completions of its prompts")
        longest = int(data.table[:, 2].max())
        if longest + gen_length > seq_len:
            raise DataError(f"a prompt of {longest} tokens and a completion of {gen_length} (grpo.gen_length) exceed "
                            f"data.seq_len={seq_len}")
        self.data, self.global_batch, self.seed, self.seq_len = data, global_batch, seed, seq_len
        self.prompts_per_step = global_batch // generations
        self.rank, self.world = rank, world

    def step(self, step: int) -> list[PromptBatch]:
        share = self.prompts_per_step // self.world
        start = step * self.prompts_per_step + self.rank * share
        indices = list(range(start, start + share))
        rows = global_order(np.array(indices, dtype=np.int64), len(self.data), self.seed).tolist()
        return [PromptBatch([self.data.prompt(r) for r in rows], indices, [self.data.texts[r] for r in rows],
                            [self.data.records[r] for r in rows])]
