"""The pretokenized shard format, and opening a shard set with every check a user needs.

A shard set is a directory (one per split) holding:
  shard-NNNNN.bin   a 32-byte header (magic, format version, token byte width, token count,
                    document count; little-endian) followed by uint32 token ids, documents
                    separated by EOS (each document is followed by one EOS);
  index.json        format name and version, the tokenizer's fingerprint, vocabulary size and EOS
                    id, and per shard: file name, tokens, documents, bytes, sha256.
Files are written under a temporary name and renamed, so a shard that exists is complete; the
index is written last, so a set with an index is complete.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Iterable, Literal

import numpy as np

from ..errors import ShardError
from .storage import Storage

FORMAT_NAME = "llada-ds-shards"
FORMAT_VERSION = 1
MAGIC = b"LLDSTOK\x00"
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, tokens, documents
HEADER_BYTES = HEADER.size  # 32
TOKEN_DTYPE = np.dtype("<u4")
INDEX_NAME = "index.json"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


def encode_shard(tokens: np.ndarray, documents: int) -> bytes:
    tokens = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
    return HEADER.pack(MAGIC, FORMAT_VERSION, TOKEN_DTYPE.itemsize, tokens.size, documents) + tokens.tobytes()


@dataclass(frozen=True)
class ShardInfo:
    file: str
    tokens: int
    documents: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class TokenizerInfo:
    fingerprint: str
    vocab_size: int
    eos_id: int


@dataclass
class ShardIndex:
    tokenizer: TokenizerInfo
    shards: list[ShardInfo] = field(default_factory=list)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def total_documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def fingerprint(self) -> str:
        """Identifies the data: changes if any shard's content or the tokenizer changes."""
        h = hashlib.sha256(self.tokenizer.fingerprint.encode())
        for s in self.shards:
            h.update(f"{s.file}:{s.tokens}:{s.sha256}".encode())
        return h.hexdigest()[:16]

    def to_json(self) -> str:
        body = {
            "format": self.format, "version": self.version,
            "tokenizer": asdict(self.tokenizer),
            "total_tokens": self.total_tokens, "total_documents": self.total_documents,
            "shards": [asdict(s) for s in self.shards],
        }
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def load(cls, storage: Storage) -> "ShardIndex":
        where = storage.describe(INDEX_NAME)
        if not storage.exists(INDEX_NAME):
            raise ShardError(f"{where}: no shard index (missing or unfinished shard build?)")
        try:
            body = json.loads(storage.read_bytes(INDEX_NAME).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ShardError(f"{where}: not valid JSON ({exc})") from None
        if body.get("format") != FORMAT_NAME:
            raise ShardError(f"{where}: format {body.get('format')!r} is not {FORMAT_NAME!r}")
        if body.get("version") != FORMAT_VERSION:
            raise ShardError(f"{where}: format version {body.get('version')!r}, this reader reads {FORMAT_VERSION}")
        try:
            return cls(
                tokenizer=TokenizerInfo(**body["tokenizer"]),
                shards=[ShardInfo(**s) for s in body["shards"]],
            )
        except (KeyError, TypeError) as exc:
            raise ShardError(f"{where}: malformed index ({exc})") from None


def file_sha256(storage: Storage, name: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    size = storage.size(name)
    for offset in range(0, size, chunk):
        h.update(storage.read_bytes(name, offset, min(chunk, size - offset)))
    return h.hexdigest()


Verify = Literal["full", "header", "auto"]


class ShardSet:
    """All shards of one split as one random-access token stream.

    Opening checks every shard's presence, size and header (cheap: for object storage, one
    listing and one batch of concurrent header reads). With verify="full" it also checks the sha256
    of the shards in ``verify_shards`` (default all; a distributed reader gives each rank a share so
    every shard is hashed once per job); "auto" is full on a file system and header for object
    storage, where hashing means downloading the whole set. Token ids are checked against the
    vocabulary as they are read.
    """

    def __init__(
        self, storage: Storage, verify: Verify = "full", tokenizer_fingerprint: str | None = None,
        verify_shards: Iterable[int] | None = None,
    ) -> None:
        self.storage = storage
        self.index = ShardIndex.load(storage)
        tok = self.index.tokenizer
        if tokenizer_fingerprint is not None and tokenizer_fingerprint != tok.fingerprint:
            raise ShardError(
                f"{storage.describe(INDEX_NAME)}: shards were built with tokenizer {tok.fingerprint}, "
                f"but this run uses tokenizer {tokenizer_fingerprint}; re-tokenize or use the matching tokenizer"
            )
        if verify not in ("full", "header", "auto"):
            raise ValueError(f"data.verify must be 'full', 'header' or 'auto', got {verify!r}")
        if verify == "auto":
            verify = "header" if storage.remote else "full"
        self.vocab_size = tok.vocab_size
        self.eos_id = tok.eos_id
        names = [s.file for s in self.index.shards]
        sizes = storage.stat_many(names)
        for info, size in zip(self.index.shards, sizes):
            self._check_size(info, size)
        headers = storage.read_many([(n, 0, HEADER_BYTES) for n in names])
        for info, header in zip(self.index.shards, headers):
            self._check_header(info, header)
        if verify == "full":
            for i in range(len(self.index.shards)) if verify_shards is None else verify_shards:
                info = self.index.shards[i]
                if file_sha256(storage, info.file) != info.sha256:
                    raise ShardError(f"{storage.describe(info.file)}: checksum mismatch (corrupt or replaced shard)")
        self.offsets = np.concatenate(([0], np.cumsum([s.tokens for s in self.index.shards]))).astype(np.int64)

    def _check_size(self, info: ShardInfo, size: int | None) -> None:
        where = self.storage.describe(info.file)
        if size is None:
            raise ShardError(f"{where}: shard listed in the index is missing")
        if size != info.bytes or size != HEADER_BYTES + info.tokens * TOKEN_DTYPE.itemsize:
            raise ShardError(
                f"{where}: {size} bytes, the index expects {info.bytes} ({info.tokens} tokens): truncated or corrupt"
            )

    def _check_header(self, info: ShardInfo, header: bytes) -> None:
        where = self.storage.describe(info.file)
        magic, version, width, tokens, documents = HEADER.unpack(header)
        if magic != MAGIC:
            raise ShardError(f"{where}: not a llada-ds shard (bad magic {magic!r})")
        if version != FORMAT_VERSION or width != TOKEN_DTYPE.itemsize:
            raise ShardError(f"{where}: shard format version {version} / {width}-byte tokens, expected "
                             f"{FORMAT_VERSION} / {TOKEN_DTYPE.itemsize}")
        if tokens != info.tokens or documents != info.documents:
            raise ShardError(f"{where}: header says {tokens} tokens / {documents} documents, "
                             f"the index says {info.tokens} / {info.documents}")

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])

    def _rows(self, shard: int, local_starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` tokens of one shard (memory-mapped locally, range requests remotely)."""
        return self.storage.rows(self.index.shards[shard].file, TOKEN_DTYPE, HEADER_BYTES, local_starts, length)

    def _check_vocab(self, shard: int, local_start: int, tokens: np.ndarray) -> None:
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            flat = tokens.reshape(-1)
            bad = int(np.argmax(flat >= self.vocab_size))
            raise ShardError(
                f"{self.storage.describe(self.index.shards[shard].file)}: token {int(flat[bad])} at token offset "
                f"{local_start + bad} is outside the vocabulary of {self.vocab_size}"
            )

    def read_windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` tokens starting at each of `starts`, as an (n, length) int64 array.

        Rows that lie inside one shard (all but a few) are gathered per shard in one vectorised
        read; rows that straddle two shards go through read().
        """
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and (starts.min() < 0 or starts.max() + length > self.total_tokens):
            raise IndexError(f"windows of {length} outside [0, {self.total_tokens})")
        out = np.empty((starts.size, length), dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, starts, side="right") - 1
        inside = starts + length <= self.offsets[shard_of + 1]
        for shard in np.unique(shard_of[inside]):
            rows = np.nonzero(inside & (shard_of == shard))[0]
            local = starts[rows] - self.offsets[shard]
            block = self._rows(int(shard), local, length)
            if block.size and int(block.max()) >= self.vocab_size:
                r = int(np.argmax((block >= self.vocab_size).any(axis=1)))
                self._check_vocab(int(shard), int(local[r]), block[r])  # raises, naming the offset
            out[rows] = block
        for row in np.nonzero(~inside)[0]:
            out[row] = self.read(int(starts[row]), length)
        return out

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the concatenated stream, as int64."""
        if start < 0 or start + length > self.total_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {self.total_tokens})")
        out = np.empty(length, dtype=np.int64)
        pos, filled = start, 0
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while filled < length:
            local = pos - int(self.offsets[shard])
            take = min(length - filled, int(self.offsets[shard + 1]) - pos)
            chunk = self._rows(shard, np.array([local]), take)[0]
            self._check_vocab(shard, local, chunk)
            out[filled : filled + take] = chunk
            filled += take
            pos += take
            shard += 1
        return out


def write_shard(storage: Storage, i: int, tokens: np.ndarray, documents: int) -> ShardInfo:
    """Write shard i atomically and describe it for the index."""
    data = encode_shard(tokens, documents)
    name = shard_name(i)
    storage.write_atomic(name, data)
    return ShardInfo(name, int(np.asarray(tokens).size), documents, len(data), hashlib.sha256(data).hexdigest())


def write_index(storage: Storage, tokenizer: TokenizerInfo, shards: list[ShardInfo]) -> ShardIndex:
    index = ShardIndex(tokenizer=tokenizer, shards=list(shards))
    storage.write_atomic(INDEX_NAME, index.to_json().encode())
    return index
