"""Tokenize text once into shard sets (train and validation), in parallel and resumably.

Inputs are read with the `datasets` library, streaming and offline: text files (one document per
file), jsonl / json / parquet files (one document per record, text in a configurable field), or a
dataset a user saved with `save_to_disk`. Documents are numbered in input order (files sorted);
document k goes to validation when a hash of (split seed, k) falls below the validation fraction,
so the split is fixed by the inputs alone. Each split fills shards of about `shard_tokens` tokens
with whole documents, each followed by EOS.

Resuming: after each shard, `build_progress.json` records the shard and the last document number
it holds. A rerun skips (without tokenizing) every document already in a written shard and
continues, so an interrupted build finishes with byte-identical output to an uninterrupted one.
The index of each split is written last; a finished build is not redone.

The output may be an object-store URI (s3://bucket/corpus): each shard is uploaded as one complete
object, the progress file after it and the index last, so the same rules hold there.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..keys import noise_key
from .shards import INDEX_NAME, TOKEN_DTYPE, ShardInfo, TokenizerInfo, write_index, write_shard
from ..errors import BuildError
from .storage import join, open_storage
from .tokenizer import Tokenizer

PROGRESS = "build_progress.json"
SPLITS = ("train", "validation")
STREAM_SPLIT = 32
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class BuildConfig:
    inputs: list[str]
    out_dir: str
    tokenizer: str
    text_field: str = "text"
    val_fraction: float = 0.01
    shard_tokens: int = 64 * 2**20  # 256 MiB of uint32 per shard
    split_seed: int = 0
    workers: int = 1
    docs_per_task: int = 64
    # Stop after this many shards (all splits together): lets tests interrupt a build exactly.
    max_shards: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise BuildError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens <= 0:
            raise BuildError(f"shard_tokens must be positive, got {self.shard_tokens}")
        if self.workers < 1:
            raise BuildError(f"workers must be at least 1, got {self.workers}")


# -- reading documents -----------------------------------------------------------------------------

def resolve_inputs(inputs: list[str]) -> list[str]:
    """Expand globs and directories into a sorted list of files (or saved-dataset directories)."""
    out = []
    for item in inputs:
        matches = sorted(glob.glob(item, recursive=True)) or [item]
        for m in matches:
            p = Path(m)
            if p.is_dir() and not ((p / "dataset_info.json").is_file() or (p / "state.json").is_file()):
                out += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.endswith(
                    TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES))
            elif p.exists():
                out.append(str(p))
            else:
                raise BuildError(f"input {item}: no such file or directory")
    if not out:
        raise BuildError(f"inputs {inputs}: no text, json(l) or parquet files found")
    return out


def _builder_for(path: str) -> str:
    if path.endswith(TEXT_SUFFIXES):
        return "text"
    if path.endswith(JSON_SUFFIXES):
        return "json"
    if path.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise BuildError(f"input {path}: unknown format (use .txt, .json/.jsonl or .parquet, or a saved dataset)")


def open_records(path: str) -> Iterator[dict]:
    """The records of one input, through `datasets` (streaming, offline): a saved dataset directory,
    or a .txt (one record {"text": whole file}), .json/.jsonl or .parquet file."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    if Path(path).is_dir():
        stream = datasets.load_from_disk(path)
        if isinstance(stream, datasets.DatasetDict):
            raise BuildError(f"input {path}: a DatasetDict; pass one split's directory")
        return iter(stream.to_iterable_dataset())
    builder = _builder_for(path)
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    return iter(datasets.load_dataset(builder, data_files=[path], split="train", streaming=True, **kwargs))


def read_documents(files: list[str], text_field: str = "text") -> Iterator[str]:
    """Documents in input order (text files are one document each; records give `text_field`)."""
    for path in files:
        field_name = "text" if not Path(path).is_dir() and _builder_for(path) == "text" else text_field
        for record in open_records(path):
            if field_name not in record:
                raise BuildError(f"input {path}: record has no field {field_name!r} (fields: {', '.join(record)})")
            text = record[field_name]
            if not isinstance(text, str):
                raise BuildError(f"input {path}: field {field_name!r} holds {type(text).__name__}, not text")
            yield text


# -- tokenizing ------------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_path: str, threads: int = -1, loaded: Tokenizer | None = None) -> None:
    """Set up this process's tokenizer; `loaded` reuses one already in memory (single-worker builds)."""
    global _worker_tokenizer  # one tokenizer per worker process, loaded once
    _worker_tokenizer = loaded if loaded is not None else Tokenizer.load(tokenizer_path)
    _worker_tokenizer.threads = threads


def _encode_task(task: list[tuple[int, str, str]]) -> list[tuple[int, str, np.ndarray]]:
    ids = _worker_tokenizer.encode_batch([text for _, _, text in task])
    return [(ordinal, split, np.asarray(row, dtype=TOKEN_DTYPE)) for (ordinal, split, _), row in zip(task, ids)]


def split_of(ordinal: int, val_fraction: float, seed: int) -> str:
    return "validation" if noise_key(seed, STREAM_SPLIT, 0, ordinal) < val_fraction * 2**64 else "train"


@dataclass
class _SplitProgress:
    shards: list[ShardInfo] = field(default_factory=list)
    last_ordinal: int = -1  # every document up to here is in a written shard
    done: bool = False


class ShardBuilder:
    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = cfg
        self.files = resolve_inputs(cfg.inputs)
        self.tokenizer = Tokenizer.load(cfg.tokenizer)
        self.tok_info = TokenizerInfo(self.tokenizer.fingerprint, self.tokenizer.vocab_size, self.tokenizer.special.eos)
        # A directory or an object-store URI: each shard is one complete object, the index last.
        self.storage = {s: open_storage(join(cfg.out_dir, s)) for s in SPLITS}
        self.root = open_storage(cfg.out_dir)
        self.settings = {
            "inputs": [(f, os.path.getsize(f) if os.path.isfile(f) else None) for f in self.files],
            "tokenizer": self.tok_info.fingerprint, "text_field": cfg.text_field,
            "val_fraction": cfg.val_fraction, "shard_tokens": cfg.shard_tokens, "split_seed": cfg.split_seed,
        }
        self.progress = self._load_progress()

    def _load_progress(self) -> dict[str, _SplitProgress]:
        if not self.root.exists(PROGRESS):
            return {s: _SplitProgress() for s in SPLITS}
        saved = json.loads(self.root.read_bytes(PROGRESS))
        if saved["settings"] != json.loads(json.dumps(self.settings)):
            raise BuildError(
                f"{self.root.describe(PROGRESS)}: this output directory holds a build with other settings "
                "(inputs, tokenizer, split or shard size); use a new output directory"
            )
        return {s: _SplitProgress([ShardInfo(**i) for i in p["shards"]], p["last_ordinal"], p["done"])
                for s, p in saved["splits"].items()}

    def _save_progress(self) -> None:
        body = {"settings": self.settings, "splits": {
            s: {"shards": [asdict(i) for i in p.shards], "last_ordinal": p.last_ordinal, "done": p.done}
            for s, p in self.progress.items()}}
        self.root.write_atomic(PROGRESS, (json.dumps(body, indent=1) + "\n").encode())

    def _tasks(self) -> Iterator[list[tuple[int, str, str]]]:
        task = []
        for ordinal, text in enumerate(read_documents(self.files, self.cfg.text_field)):
            split = split_of(ordinal, self.cfg.val_fraction, self.cfg.split_seed)
            if ordinal <= self.progress[split].last_ordinal:
                continue  # already in a written shard: not tokenized again
            task.append((ordinal, split, text))
            if len(task) == self.cfg.docs_per_task:
                yield task
                task = []
        if task:
            yield task

    def run(self, progress_bar: bool = True) -> dict[str, int]:
        """Build (or finish) the shard sets; returns tokens per split, or {} if stopped early
        (after cfg.max_shards new shards)."""
        if all(p.done for p in self.progress.values()):
            return {s: sum(i.tokens for i in p.shards) for s, p in self.progress.items()}
        buffers = {s: ([], 0, 0) for s in SPLITS}  # arrays, tokens, documents
        last_seen = {s: self.progress[s].last_ordinal for s in SPLITS}
        written = 0
        eos = np.array([self.tok_info.eos_id], dtype=TOKEN_DTYPE)

        def flush(split: str) -> None:
            nonlocal written
            arrays, _, docs = buffers[split]
            p = self.progress[split]
            p.shards.append(write_shard(self.storage[split], len(p.shards), np.concatenate(arrays), docs))
            p.last_ordinal = last_seen[split]
            self._save_progress()
            buffers[split] = ([], 0, 0)
            written += 1

        from tqdm import tqdm

        bar = tqdm(desc="tokenizing", unit=" docs", disable=not progress_bar)
        pool = mp.get_context("spawn").Pool(self.cfg.workers, _init_worker, (self.cfg.tokenizer, 1)) \
            if self.cfg.workers > 1 else None
        if pool is None:
            _init_worker(self.cfg.tokenizer, loaded=self.tokenizer)  # this process: no second load
        try:
            results = pool.imap(_encode_task, self._tasks()) if pool else map(_encode_task, self._tasks())
            for batch in results:
                for ordinal, split, ids in batch:
                    last_seen[split] = ordinal
                    bar.update(1)
                    if ids.size == 0:
                        continue  # an empty document adds nothing, not even an EOS
                    if ids.max() >= self.tok_info.vocab_size:
                        raise BuildError(f"document {ordinal}: token {int(ids.max())} outside the vocabulary")
                    arrays, tokens, docs = buffers[split]
                    buffers[split] = (arrays + [ids, eos], tokens + ids.size + 1, docs + 1)
                    if buffers[split][1] >= self.cfg.shard_tokens:
                        flush(split)
                        if self.cfg.max_shards is not None and written >= self.cfg.max_shards:
                            return {}
            for split in SPLITS:
                if buffers[split][2]:
                    flush(split)
                else:
                    self.progress[split].last_ordinal = last_seen[split]
        finally:
            bar.close()
            if pool:
                pool.terminate()
        for split in SPLITS:
            p = self.progress[split]
            if not p.shards:
                raise BuildError(f"split {split} received no documents (val_fraction {self.cfg.val_fraction}); "
                                 "adjust val_fraction or add input")
            write_index(self.storage[split], self.tok_info, p.shards)
            p.done = True
        self._save_progress()
        return {s: sum(i.tokens for i in p.shards) for s, p in self.progress.items()}


def build_shards(cfg: BuildConfig, progress_bar: bool = True) -> dict[str, int]:
    return ShardBuilder(cfg).run(progress_bar)


def is_built(out_dir: str | os.PathLike) -> bool:
    return all(open_storage(join(out_dir, s)).exists(INDEX_NAME) for s in SPLITS)
