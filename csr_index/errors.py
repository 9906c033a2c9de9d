"""Named exceptions raised by csr-index.

Each one subclasses the built-in exception a caller would already catch
(``ValueError``, ``OSError``...), so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "NotTrainedError",
    "IndexFormatError",
    "CorruptIndexError",
    "FormatVersionError",
    "MissingIndexFileError",
    "StaleIndexError",
]


class NotTrainedError(ValueError, AttributeError):
    """The index (or adapter) is used before ``train`` was called."""


class IndexFormatError(ValueError):
    """Base class for every problem with an index directory on disk."""


class CorruptIndexError(IndexFormatError):
    """A file of the index is truncated, altered, or does not match its manifest."""


class FormatVersionError(IndexFormatError):
    """The index was written by an incompatible version of the on-disk format."""


class MissingIndexFileError(IndexFormatError, FileNotFoundError):
    """The index directory, its manifest, or a file the manifest names does not exist."""


class StaleIndexError(RuntimeError):
    """A save would replace an index directory that another handle or process saved after this
    handle loaded or last saved it (its rows would be lost)."""
