"""Exact, resumable streaming of fixed-length training windows to data-parallel ranks.

The token stream of a shard set (documents separated by EOS) is cut into windows of seq_len
tokens, packed across document boundaries (LLaDA trains on such windows, with no attention mask).
Global sample g is window shuffled(g mod n, seed, epoch = g div n): the order is a pure function
of (seed, global sample index), like Megatron's and OLMo-core's loaders. Optimizer step s
consumes global samples [s*B, (s+1)*B) for global batch B; rank r of W takes the contiguous
slice [s*B + r*B/W, s*B + (r+1)*B/W), cut into micro-batches for gradient accumulation.

So the only state is the global counter (samples consumed = step * B), plus the seed and the data
fingerprint to refuse resuming on other data. A job resumed with another world size continues the
exact global sequence: nothing is skipped or repeated.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import DataStateError
from .batch import DataState, MicroBatch, split_batch
from .order import global_order
from .prefetch import Prefetcher
from .shards import ShardSet


def doc_ids_from_eos(tokens: np.ndarray | torch.Tensor, eos_id: int):
    """Document number of each token in a window; an EOS belongs to the document it ends."""
    is_eos = tokens == eos_id
    if isinstance(tokens, torch.Tensor):
        ends = torch.zeros_like(tokens, dtype=torch.long)
        ends[..., 1:] = is_eos[..., :-1].long()
        return ends.cumsum(-1)
    ends = np.zeros(tokens.shape, dtype=np.int64)
    ends[..., 1:] = is_eos[..., :-1]
    return ends.cumsum(-1)


class WindowDataset:
    """Random access to global samples: sample g -> one window of tokens."""

    def __init__(self, shards: ShardSet, seq_len: int, seed: int) -> None:
        if seq_len <= 0:
            raise ValueError(f"data.seq_len must be positive, got {seq_len}")
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        self.n_windows = shards.total_tokens // seq_len
        if self.n_windows == 0:
            raise DataStateError(
                f"{shards.storage.describe('')}: {shards.total_tokens} tokens, fewer than one window of {seq_len}"
            )

    def windows(self, sample_indices: np.ndarray) -> np.ndarray:
        return global_order(sample_indices, self.n_windows, self.seed)

    def get(self, sample_indices: list[int]) -> np.ndarray:
        """(len(sample_indices), seq_len) int64 tokens."""
        return self.shards.read_windows(self.windows(np.array(sample_indices)) * self.seq_len, self.seq_len)


class DistributedBatches:
    """The micro-batches rank `rank` of `world` trains on at each optimizer step.

    prefetch_steps > 0 reads the windows of that many steps ahead in background threads (for
    shards in object storage; local shards are memory-mapped and need none)."""

    def __init__(
        self, dataset: WindowDataset, global_batch: int, micro_batch: int, rank: int = 0, world: int = 1,
        document_masking: bool = False, prefetch_steps: int = 0,
    ) -> None:
        if world <= 0 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world size {world}")
        self.accumulation = split_batch(global_batch, micro_batch, world)
        self.dataset, self.global_batch, self.micro_batch = dataset, global_batch, micro_batch
        self.rank, self.world = rank, world
        self.document_masking = document_masking
        self.per_rank = global_batch // world
        self._rows = Prefetcher(self._read, prefetch_steps) if prefetch_steps > 0 else self._read

    def _read(self, step: int) -> np.ndarray:
        return self.dataset.get(self.sample_indices(step))

    def close(self) -> None:
        if isinstance(self._rows, Prefetcher):
            self._rows.close()

    def sample_indices(self, step: int) -> list[int]:
        start = step * self.global_batch + self.rank * self.per_rank
        return list(range(start, start + self.per_rank))

    def step(self, step: int) -> list[MicroBatch]:
        indices = self.sample_indices(step)
        rows = torch.from_numpy(self._rows(step))  # one vectorised lookup per step
        out = []
        for i in range(0, len(indices), self.micro_batch):
            chunk = indices[i : i + self.micro_batch]
            tokens = rows[i : i + self.micro_batch]
            docs = doc_ids_from_eos(tokens, self.dataset.shards.eos_id) if self.document_masking else None
            out.append(MicroBatch(tokens, chunk, docs))
        return out

    def steps(self, start_step: int) -> Iterator[tuple[int, list[MicroBatch]]]:
        step = start_step
        while True:
            yield step, self.step(step)
            step += 1

    def state(self, steps_done: int) -> DataState:
        return DataState(steps_done * self.global_batch, self.dataset.seed, self.dataset.seq_len,
                         self.dataset.shards.index.fingerprint, self.global_batch)

    def resume_step(self, state: DataState, saved_step: Optional[int] = None) -> int:
        """The step to continue from, after checking the state belongs to this data and config."""
        return state.resume_step(self.state(0), self.global_batch, saved_step)


def validation_micro_batches(shards: ShardSet, seq_len: int, micro_batch: int, samples: int, rank: int = 0,
                             world: int = 1) -> Iterator[MicroBatch]:
    """Rank `rank`'s share of the fixed validation windows: the first n windows of the shard set, in
    order (no shuffle), n = min(samples, windows) rounded down to a multiple of world x micro batch so
    that every rank runs the same number of forwards; each round of world x micro windows gives rank r
    the r-th micro-batch. The window index is the sample index (it keys the evaluation noise)."""
    per_round = world * micro_batch
    n = min(samples, shards.total_tokens // seq_len) // per_round * per_round
    for start in range(0, n, per_round):
        idx = list(range(start + rank * micro_batch, start + (rank + 1) * micro_batch))
        yield MicroBatch(torch.from_numpy(shards.read_windows(np.array(idx) * seq_len, seq_len)), idx)
