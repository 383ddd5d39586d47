"""The project's own errors: one base class, one subclass per kind of bad input or failure.

Every message names the file, key or value at fault. The command line prints an `LladaError` as
one line and exits with a non-zero code; anything else (a bug, an out-of-memory error) keeps its
traceback. The subclasses also derive from the built-in exception that fits (ValueError for bad
values, RuntimeError for failures), so code that catches those keeps working.
"""

from __future__ import annotations


class LladaError(Exception):
    """Base of every error llada-ds raises on purpose."""


class ConfigError(LladaError, ValueError):
    """A configuration value or command-line argument is invalid."""


class DataError(LladaError, ValueError):
    """Training or evaluation data is unusable (tokens outside the vocabulary, a bad record...)."""


class ShardError(DataError):
    """A shard set is missing, corrupt, or was built with another tokenizer."""


class BuildError(DataError):
    """The shard builder cannot read or tokenize its input."""


class DataStateError(DataError):
    """A saved data state does not fit this data set or configuration."""


class StorageError(LladaError, OSError):
    """Object storage refused a request or could not be reached (credentials, bucket, endpoint)."""


class TokenizerError(LladaError, ValueError):
    """A tokenizer folder is missing or unusable."""


class CorpusError(LladaError, RuntimeError):
    """The bundled corpus could not be fetched or extracted."""


class CheckpointError(LladaError, RuntimeError):
    """A checkpoint is missing, incomplete, or belongs to another model."""


class TrainingError(LladaError, RuntimeError):
    """Training cannot continue (e.g. bad steps again after every allowed recovery)."""


class ExportError(LladaError, RuntimeError):
    """An export or a push to the Hugging Face Hub failed."""


class BatchSplitError(ConfigError, DataStateError):
    """The global batch cannot be split over the ranks in micro batches (a setting, found from the data side too)."""
