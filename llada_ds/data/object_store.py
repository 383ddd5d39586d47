"""Object storage (S3, GCS, S3-compatible stores such as MinIO or R2) through fsspec.

`ObjectStorage("s3://bucket/prefix")` is the `Storage` of data/storage.py for a prefix in a
bucket, plus what a run directory needs (upload, download, list, delete). The client library is
the protocol's fsspec implementation (s3fs, gcsfs: the `s3` / `gcs` extras); credentials and
endpoint come from where that library looks: for S3 the usual environment variables
(AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL for S3-compatible stores, ...), ~/.aws/config
and credentials, instance roles. Nothing here logs or stores them; messages name URIs only.

Reads are HTTP range requests: `rows` fetches many windows of one object concurrently (fsspec's
cat_ranges on its event loop). Throttling (SlowDown, 503) and transient errors are retried with
exponential backoff by the client (botocore's "standard" retry mode and s3fs' own retries); what
still fails becomes a `StorageError` naming the URI. A short read (an object truncated or
replaced since its size was checked) is refused, never padded. Small ranges are kept in a bounded
LRU cache (validation windows are read at every evaluation).

Writes are single objects, which an object store makes visible complete or not at all (a
multipart upload appears only when completed), so `write_atomic` needs no temporary name.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Optional

import fsspec
import numpy as np

from ..errors import StorageError

# Client settings per protocol: retries with backoff, and timeouts that bound how long an
# unreachable endpoint can hold a command.
_CLIENT_OPTIONS = {
    "s3": {"config_kwargs": {"retries": {"max_attempts": 5, "mode": "standard"}, "connect_timeout": 10,
                             "read_timeout": 120}},
}
DEFAULT_CACHE_BYTES = 256 * 2**20
_CACHED_READ_LIMIT = 1 * 2**20  # larger reads (checksums, downloads) are not cached


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0]


def _filesystem(uri: str):
    protocol = protocol_of(uri)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
        hint = f" (pip install 'llada-ds[{extra}]')" if extra else ""
        raise StorageError(f"{uri}: no file system for {protocol}://{hint}: {exc}") from None
    # Listings are never cached: several processes write the same prefix (markers, checkpoints).
    options = {**_CLIENT_OPTIONS.get(protocol, {}), "use_listings_cache": False, "skip_instance_cache": True}
    return cls(**options), cls._strip_protocol(uri).rstrip("/")


class ObjectStorage:
    """A prefix in an object store, as a Storage (names are '/'-separated paths below it)."""

    remote = True

    def __init__(self, uri: str, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.uri = uri.rstrip("/")
        self.protocol = protocol_of(uri)
        self.fs, self.root = _filesystem(self.uri)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        self._bucket_checked = False

    # -- names -------------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"{self.root}/{name.strip('/')}" if name.strip("/") else self.root

    def describe(self, name: str) -> str:
        return f"{self.protocol}://{self.path(name)}"

    # -- errors ------------------------------------------------------------------------------------
    def _call(self, name: str, fn: Callable, *args, **kwargs):
        """Run one client call; FileNotFoundError passes, everything else names the URI."""
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except StorageError:
            raise
        except PermissionError as exc:
            raise StorageError(f"{self.describe(name)}: access denied ({_scrub(exc)}); check the credentials the "
                               f"{self.protocol} client finds (environment, config files, instance role)") from None
        except Exception as exc:  # the client's own types (botocore, aiohttp, google-auth) vary
            raise StorageError(f"{self.describe(name)}: {type(exc).__name__}: {_scrub(exc)}") from None

    def check_bucket(self) -> None:
        """Refuse a bucket that does not exist (an empty answer would otherwise read as 'no file')."""
        if self._bucket_checked:
            return
        bucket = self.root.split("/", 1)[0]
        try:  # info, not exists: exists() answers False to every error, credentials included
            self.fs.info(bucket)
        except FileNotFoundError:
            raise StorageError(f"{self.protocol}://{bucket}: no such bucket (it must exist before llada-ds "
                               f"reads or writes {self.uri})") from None
        except PermissionError:
            pass  # credentials scoped to a prefix may not see the bucket itself; object requests say more
        except Exception as exc:
            self._call("", _reraise, exc)
        self._bucket_checked = True

    def _write(self, name: str, fn: Callable, *args) -> None:
        """A write; a missing bucket is named as such."""
        try:
            self._call(name, fn, *args)
        except FileNotFoundError:
            self.check_bucket()
            raise StorageError(f"{self.describe(name)}: the store refused the write (not found)") from None

    # -- Storage -----------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        try:  # info, not isfile: isfile answers False to every error, credentials included
            found = self._call(name, self.fs.info, self.path(name)).get("type") == "file"
        except FileNotFoundError:
            found = False
        if not found:
            self.check_bucket()
        return bool(found)

    def size(self, name: str) -> int:
        try:
            return int(self._call(name, self.fs.size, self.path(name)))
        except FileNotFoundError:
            self.check_bucket()
            raise StorageError(f"{self.describe(name)}: no such object") from None

    def read_bytes(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = (name, offset, length)
        cached = self._cache_get(key)
        if cached is not None:
            return cached
        end = None if length is None else offset + length
        try:
            data = self._call(name, self.fs.cat_file, self.path(name), start=offset or None, end=end)
        except FileNotFoundError:
            self.check_bucket()
            raise StorageError(f"{self.describe(name)}: no such object") from None
        if length is not None and len(data) != length:
            raise StorageError(f"{self.describe(name)}: read {len(data)} bytes at offset {offset}, expected {length} "
                               "(object truncated or replaced while in use)")
        if length is not None and length <= _CACHED_READ_LIMIT:
            self._cache_put(key, data)
        return data

    def stat_many(self, names: list[str]) -> list[int | None]:
        prefix = os.path.commonpath(names) if len(names) > 1 else os.path.dirname(names[0]) if names else ""
        sizes = self.sizes("" if prefix in names else prefix)
        return [sizes.get(n) for n in names]

    def read_many(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        if not requests:
            return []
        got = self._call(requests[0][0], self.fs.cat_ranges, [self.path(n) for n, _, _ in requests],
                         [o for _, o, _ in requests], [o + n for _, o, n in requests], on_error="return")
        for (name, offset, length), data in zip(requests, got):
            if isinstance(data, FileNotFoundError):
                raise StorageError(f"{self.describe(name)}: no such object")
            if isinstance(data, BaseException):
                self._call(name, _reraise, data)
            if len(data) != length:
                raise StorageError(f"{self.describe(name)}: read {len(data)} bytes at offset {offset}, expected "
                                   f"{length} (object truncated or replaced while in use)")
        return got

    def rows(self, name: str, dtype: np.dtype, offset: int, starts: np.ndarray, length: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((starts.size, length), dtype=dtype)
        nbytes = length * dtype.itemsize
        begins = [offset + int(s) * dtype.itemsize for s in starts]
        missing = []
        for i, b in enumerate(begins):
            data = self._cache_get((name, b, nbytes))
            if data is None:
                missing.append(i)
            else:
                out[i] = np.frombuffer(data, dtype=dtype)
        if missing:
            path = self.path(name)
            got = self._call(name, self.fs.cat_ranges, [path] * len(missing), [begins[i] for i in missing],
                             [begins[i] + nbytes for i in missing], on_error="return")
            for i, data in zip(missing, got):
                if isinstance(data, BaseException):
                    self._call(name, _reraise, data)
                if len(data) != nbytes:
                    raise StorageError(f"{self.describe(name)}: read {len(data)} bytes at offset {begins[i]}, "
                                       f"expected {nbytes} (object truncated or replaced while in use)")
                out[i] = np.frombuffer(data, dtype=dtype)
                self._cache_put((name, begins[i], nbytes), data)
        return out

    def write_atomic(self, name: str, chunks: list[bytes] | bytes) -> None:
        data = chunks if isinstance(chunks, bytes) else b"".join(chunks)
        self._write(name, self.fs.pipe_file, self.path(name), data)
        self._cache_drop(name)

    # -- run directories ---------------------------------------------------------------------------
    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects below `prefix` (relative to this storage's root), sorted."""
        base = self.path(prefix)
        try:
            found = self._call(prefix, self.fs.find, base)
        except FileNotFoundError:
            return []
        return sorted(p[len(self.root) + 1:] for p in found if p.startswith(self.root + "/"))

    def delete(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            self._call(names[0], self.fs.rm, [self.path(n) for n in names])
        for n in names:
            self._cache_drop(n)

    def upload(self, local: str | os.PathLike, name: str) -> None:
        """One local file -> one object (it appears complete, or not at all)."""
        self._write(name, self.fs.put_file, str(local), self.path(name))

    def upload_many(self, files: list[tuple[Path, str]]) -> None:
        """Local files -> objects, concurrently (the order they become visible is not defined)."""
        if files:
            self._write(files[0][1], self.fs.put, [str(f) for f, _ in files], [self.path(n) for _, n in files])

    def upload_tree(self, local: Path, prefix: str, last: tuple[str, ...] = ()) -> list[str]:
        """Every file below the folder `local` to `prefix`, keeping the layout; the files named in
        `last` (relative names) only after all others are stored, so that they can mark the
        folder complete. Returns the object names."""
        files = sorted(p for p in Path(local).rglob("*") if p.is_file())
        rel = {f: f.relative_to(local).as_posix() for f in files}
        first = [(f, f"{prefix}/{rel[f]}".strip("/")) for f in files if rel[f] not in last]
        self.upload_many(first)
        for name in last:
            if (Path(local) / name).is_file():
                self.upload(Path(local) / name, f"{prefix}/{name}".strip("/"))
        return [n for _, n in first] + [f"{prefix}/{n}".strip("/") for n in last if (Path(local) / n).is_file()]

    def download_many(self, files: list[tuple[str, Path]]) -> None:
        """Objects -> local files, concurrently; each written under a temporary name, then renamed."""
        if not files:
            return
        tmps = [local.with_name(f".{local.name}.part-{os.getpid()}") for _, local in files]
        for t in tmps:
            t.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._call(files[0][0], self.fs.get, [self.path(n) for n, _ in files], [str(t) for t in tmps])
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri}: an object vanished while downloading ({exc})") from None
        for tmp, (_, local) in zip(tmps, files):
            os.replace(tmp, local)

    def download_tree(self, prefix: str, dest: Path, keep: Optional[Callable[[str], bool]] = None,
                      refresh: bool = True) -> list[str]:
        """Every object below `prefix` (those `keep` accepts, by name relative to `prefix`) into
        `dest`, keeping the layout. refresh=False skips files already there with the object's
        size (for content that never changes once written). Returns the names."""
        sizes = self.sizes(prefix)
        todo, names = [], []
        for n, size in sizes.items():
            rel = n[len(prefix):].lstrip("/") if prefix else n
            if keep is not None and not keep(rel):
                continue
            names.append(n)
            local = dest / rel
            if refresh or not (local.is_file() and local.stat().st_size == size):
                todo.append((n, local))
        self.download_many(todo)
        return names

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """{name: size} of the objects below `prefix`, from one (paginated) listing."""
        try:
            listing = self._call(prefix, self.fs.find, self.path(prefix), detail=True)
        except FileNotFoundError:
            listing = {}
        if not listing:
            self.check_bucket()
        return {p[len(self.root) + 1:]: int(info["size"]) for p, info in sorted(listing.items())
                if info.get("type", "file") == "file" and p.startswith(self.root + "/")}

    # -- cache -------------------------------------------------------------------------------------
    def _cache_get(self, key: tuple) -> Optional[bytes]:
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
            return data

    def _cache_put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._cached += len(data)
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)

    def _cache_drop(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == name]:
                self._cached -= len(self._cache.pop(key))


def _reraise(exc: BaseException):
    raise exc


# Environment variables whose values must never appear in a message, even if a server echoes them.
_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN")


def _scrub(exc: BaseException) -> str:
    text = str(exc)
    for key in _SECRETS:
        value = os.environ.get(key)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
