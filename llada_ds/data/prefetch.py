"""Reading ahead: the data of the next steps, fetched in background threads.

The data order is a pure function of the step (data/order.py, data/loader.py), so what the next
K steps will read is known now. `Prefetcher(read, depth)` returns read(step) and starts read(step
+ 1) ... read(step + depth) in the background; with shards in object storage the range requests of
those steps overlap the training of this one. The result is the same call of the same function,
so prefetching changes timing only, never data. Memory is bounded: at most depth + 1 steps are
held. A jump (recovery goes back to a checkpoint) drops what no longer lies ahead. An error in a
background read is raised by the call that asks for that step.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    def __init__(self, read: Callable[[int], T], depth: int, workers: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.read, self.depth = read, depth
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llada-prefetch")
        self._ahead: dict[int, Future] = {}

    def __call__(self, step: int) -> T:
        for s in [s for s in self._ahead if not step <= s <= step + self.depth]:
            self._ahead.pop(s).cancel()  # a running read finishes; its result is dropped
        future = self._ahead.pop(step, None)
        for s in range(step + 1, step + self.depth + 1):
            if s not in self._ahead:
                self._ahead[s] = self._pool.submit(self.read, s)
        return self.read(step) if future is None else future.result()

    def close(self) -> None:
        for f in self._ahead.values():
            f.cancel()
        self._ahead.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
