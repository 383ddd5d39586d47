"""Where shard files (and a run's files) live. The reader and builder only talk to this small
interface: a directory on a local or shared file system (`LocalStorage`, memory maps), or a prefix
in object storage (`s3://`, `gs://`, any fsspec URI: `ObjectStorage` in object_store.py, range
requests). `open_storage` picks one from a path or URI; `is_uri` and `join` keep URIs intact
where `pathlib.Path` would fold their `//`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np

from .object_store import ObjectStorage


class Storage(Protocol):
    def describe(self, name: str) -> str:
        """A human-readable location for error messages."""

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int: ...

    def read_bytes(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat_many(self, names: list[str]) -> list[int | None]:
        """The size of each file, None where there is none (one listing for object storage)."""

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        """(name, offset, length) reads, each exactly `length` bytes (concurrent for object storage)."""

    def rows(self, name: str, dtype: np.dtype, offset: int, starts: np.ndarray, length: int) -> np.ndarray:
        """(len(starts), length) items: row i holds items starts[i] .. starts[i] + length - 1 of the
        array of `dtype` that begins at byte `offset` of the file."""

    def write_atomic(self, name: str, chunks: list[bytes] | bytes) -> None:
        """Write a file so that it appears complete or not at all."""

    @property
    def remote(self) -> bool:
        """True for object storage (reads are requests over the network, worth prefetching)."""


def is_uri(location: str | os.PathLike) -> bool:
    """An object-store URI (s3://, gs://, ...); plain paths and file:// URIs are local."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | os.PathLike) -> Path:
    """A local path or file:// URI as a Path."""
    return Path(str(location).removeprefix("file://"))


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` for a path or a URI (pathlib would turn s3://b into s3:/b)."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(local_path(base).joinpath(*parts))


def open_storage(location: str | os.PathLike, cache_bytes: int | None = None) -> "Storage":
    """LocalStorage for a path (or file:// URI), ObjectStorage for an object-store URI (with an
    in-memory range cache of `cache_bytes`, default 256 MiB)."""
    if not is_uri(location):
        return LocalStorage(local_path(location))
    return ObjectStorage(str(location)) if cache_bytes is None else ObjectStorage(str(location), cache_bytes)


def download_cache() -> Path:
    """Where copies of remote folders are kept ($LLADA_DS_CACHE, default ~/.cache/llada-ds/objects)."""
    return Path(os.environ.get("LLADA_DS_CACHE") or Path.home() / ".cache" / "llada-ds" / "objects")


def local_copy(location: str | os.PathLike, refresh: bool = True) -> Path:
    """A folder on local disk with the content of `location`: the path itself for a local folder;
    for a URI, a copy under download_cache() (refresh=False reuses files already copied, for
    content that never changes once written, such as a complete checkpoint)."""
    if not is_uri(location):
        return local_path(location)
    uri = str(location).rstrip("/")
    dest = download_cache() / hashlib.sha256(uri.encode()).hexdigest()[:24]
    store = ObjectStorage(uri)
    names = store.download_tree("", dest, refresh=refresh)
    if not names:
        raise FileNotFoundError(f"{uri}: no objects there")
    return dest


@contextlib.contextmanager
def staged_output(location: str | os.PathLike, last: tuple[str, ...] = ()):
    """A local folder to write an output into: the folder itself, or for a URI a temporary one
    whose files are uploaded there when the block ends without an error (nothing otherwise),
    the files named in `last` after all others."""
    if not is_uri(location):
        yield local_path(location)
        return
    tmp = Path(tempfile.mkdtemp(prefix="llada-ds-out-"))
    try:
        yield tmp
        ObjectStorage(str(location)).upload_tree(tmp, "", last=last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class LocalStorage:
    """A directory on a local or shared (POSIX) file system, read through memory maps."""

    remote = False

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._maps: dict[str, np.ndarray] = {}

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

    def stat_many(self, names: list[str]) -> list[int | None]:
        return [self.size(n) if self.exists(n) else None for n in names]

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        return [self.read_bytes(n, offset, length) for n, offset, length in requests]

    def array(self, name: str, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
        """A read-only memory map of `count` items starting at byte `offset`."""
        if count == 0:
            return np.empty(0, dtype=dtype)
        return np.memmap(self.path(name), dtype=dtype, mode="r", offset=offset, shape=(count,))

    def rows(self, name: str, dtype: np.dtype, offset: int, starts: np.ndarray, length: int) -> np.ndarray:
        key = f"{name}:{offset}:{np.dtype(dtype).str}"
        if key not in self._maps:  # one map per file, kept: the OS pages what is read
            count = (self.size(name) - offset) // np.dtype(dtype).itemsize
            self._maps[key] = self.array(name, dtype, offset, count)
        return self._maps[key][np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)]

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
