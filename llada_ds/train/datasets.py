"""The run's data, opened on every rank: training micro-batches per step and validation batches.

Pre-training (and the autoregressive baseline) stream windows of a pretokenized shard set
(data/loader.py); SFT reads a conversation cache of `llada-ds sft-data` (data/sft.py), VRPO a
preference cache of `llada-ds pref-data` (data/preference.py), GRPO a prompt cache of
`llada-ds prompt-data` (data/prompts.py). Either way
the batches are a pure function of (seed, step, rank, world size), and every rank checks its share
of the shards' checksums; a problem found on one rank stops every rank with its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Protocol

from ..config import RunConfig
from ..data.batch import DataState, MicroBatch
from ..data.loader import DistributedBatches, WindowDataset, validation_micro_batches
from ..data.preference import PreferenceBatches, PreferenceData
from ..data.prompts import PromptBatches, PromptData
from ..data.sft import SFTBatches, SFTData
from ..data.shards import ShardIndex, ShardSet
from ..data.storage import open_storage
from ..data.tokenizer import Tokenizer
from ..errors import ShardError, StorageError
from .distributed import DistInfo, raise_if_any


class Batches(Protocol):
    accumulation: int

    def step(self, step: int) -> list[MicroBatch]: ...

    def state(self, steps_done: int) -> DataState: ...

    def resume_step(self, state: DataState, saved_step: Optional[int] = None) -> int:
        """The step to resume at from a checkpoint's data state (saved_step: the checkpoint's own
        step, which older data states lack)."""


@dataclass
class RunData:
    batches: Batches
    validation: Optional[Callable[[], Iterable[MicroBatch]]]  # this rank's validation micro-batches

    def step(self, step: int, dist: DistInfo) -> list[MicroBatch]:
        """This rank's micro-batches of optimizer step `step`; a read error stops every rank."""
        error, out = None, []
        try:
            out = self.batches.step(step)
        except (ShardError, StorageError) as exc:  # found on this rank only: tell every rank before anyone waits
            error = str(exc)
        raise_if_any(error, ShardError, dist.device, f"step {step}: another rank read corrupt data (see its log)")
        return out


def open_shards(path: str, verify: str, tokenizer: Tokenizer, dist: DistInfo, cache_mb: int = 256) -> ShardSet:
    """A shard set (a directory or an object-store URI) on every rank; each rank hashes its share of
    the shards, errors are shared."""
    error, shards = None, None
    try:
        storage = open_storage(path, cache_mb * 2**20)
        n = len(ShardIndex.load(storage).shards)
        shards = ShardSet(storage, verify=verify, tokenizer_fingerprint=tokenizer.fingerprint,
                          verify_shards=range(dist.rank, n, dist.world))
    except (ShardError, StorageError) as exc:
        error = str(exc)
    raise_if_any(error, ShardError, dist.device, f"{path}: another rank found a corrupt or mismatching shard (see its log)")
    return shards


# Objectives trained on a table cache (`llada-ds sft-data`, `llada-ds pref-data`): its data and batches.
TABLE_CACHES = {"sft": (SFTData, SFTBatches), "vrpo": (PreferenceData, PreferenceBatches)}


def open_run_data(cfg: RunConfig, tokenizer: Tokenizer, dist: DistInfo) -> RunData:
    d, t = cfg.data, cfg.train
    if cfg.objective.kind == "grpo":  # prompts cached by `llada-ds prompt-data`; no validation loss
        prompts = PromptData(d.train, tokenizer.fingerprint, d.verify)
        return RunData(PromptBatches(prompts, t.global_batch, t.micro_batch, cfg.grpo.generations, d.seed, d.seq_len,
                                     cfg.grpo.gen_length, dist.rank, dist.world), None)
    if cfg.objective.kind in TABLE_CACHES:  # conversations or preference pairs: same shape of data
        data_class, batches_class = TABLE_CACHES[cfg.objective.kind]
        train = data_class(d.train, tokenizer.fingerprint, d.verify)
        batches = batches_class(train, t.global_batch, t.micro_batch, d.seed, d.seq_len, dist.rank, dist.world)
        validation = None
        if d.validation:
            val = data_class(d.validation, tokenizer.fingerprint, d.verify)
            validation = lambda: val.validation_micro_batches(  # noqa: E731
                cfg.eval.samples, t.micro_batch, d.seq_len, dist.rank, dist.world)
        return RunData(batches, validation)
    shards = open_shards(d.train, d.verify, tokenizer, dist, d.cache_mb)
    batches = DistributedBatches(WindowDataset(shards, d.seq_len, d.seed), t.global_batch, t.micro_batch,
                                 dist.rank, dist.world, d.document_masking,
                                 d.prefetch_steps if shards.storage.remote else 0)
    validation = None
    if d.validation:
        val_shards = open_shards(d.validation, d.verify, tokenizer, dist, d.cache_mb)
        validation = lambda: validation_micro_batches(  # noqa: E731
            val_shards, d.seq_len, t.micro_batch, cfg.eval.samples, dist.rank, dist.world)
    return RunData(batches, validation)
