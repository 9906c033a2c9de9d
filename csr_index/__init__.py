"""csr-index: learned k-sparse codes (Contrastive Sparse Representation) for dense-embedding search."""

from __future__ import annotations

import logging

__version__ = "0.3.0"

from .codes import SparseCodes  # noqa: E402
from .config import CSRConfig  # noqa: E402
from .encoder import CSREncoder  # noqa: E402
from .errors import (  # noqa: E402
    CorruptIndexError,
    FormatVersionError,
    IndexFormatError,
    MissingIndexFileError,
    NotTrainedError,
    StaleIndexError,
)
from .index import CSRIndex  # noqa: E402
from .model import SparseAdapter  # noqa: E402

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
