"""csr-index: learned k-sparse codes (Contrastive Sparse Representation) for dense-embedding search."""

from __future__ import annotations

import logging

from ._version import __version__
from .codes import SparseCodes
from .config import CSRConfig
from .encoder import CSREncoder
from .errors import (
    CorruptIndexError,
    FormatVersionError,
    IndexFormatError,
    MissingIndexFileError,
    NotTrainedError,
    StaleIndexError,
)
from .index import CSRIndex
from .model import SparseAdapter

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "CSRIndex",
    "CSRConfig",
    "CSREncoder",
    "SparseAdapter",
    "SparseCodes",
    "NotTrainedError",
    "IndexFormatError",
    "CorruptIndexError",
    "FormatVersionError",
    "MissingIndexFileError",
    "StaleIndexError",
    "__version__",
]
