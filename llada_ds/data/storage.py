"""Where shard files live. The reader and builder only talk to this small interface, so an object
store (fsspec) can be added as another implementation without touching either of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np


class Storage(Protocol):
    def describe(self, name: str) -> str:
        """A human-readable location for error messages."""

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int: ...

    def read_bytes(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def array(self, name: str, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
        """A read-only array view of `count` items starting at byte `offset` (memory-mapped if possible)."""

    def write_atomic(self, name: str, chunks: list[bytes] | bytes) -> None:
        """Write a file so that it appears complete or not at all."""


class LocalStorage:
    """A directory on a local or shared (POSIX) file system, read through memory maps."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def describe(self, name: str) -> str:
        return str(self.path(name))

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def read_bytes(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with open(self.path(name), "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def array(self, name: str, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
        if count == 0:
            return np.empty(0, dtype=dtype)
        return np.memmap(self.path(name), dtype=dtype, mode="r", offset=offset, shape=(count,))

    def write_atomic(self, name: str, chunks: list[bytes] | bytes) -> None:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
