"""The interface every search engine implements, and the result helpers they share.

An engine holds a fixed set of stored k-sparse codes (n, h) and answers top-n
queries in code space. Every engine computes the same score, that of
:class:`csr_index.search.SparseScorer` (the reference):

    score(q, d) = (q . z_d + offset_q) * scale_d

with an optional per-query ``offset`` and per-doc ``scale`` (1 / norm under
cosine). A *sparse* query (:class:`SparseCodes`) only reaches the docs that share
one of its non-zero latents (the others are not results); a *dense* query (nq, h)
reaches every doc. Engines return ``(D, rows)``: float32 (nq, topn) scores sorted
descending and int64 storage rows, padded with (-inf, -1).

Exact engines return the reference's top-n (ties aside); approximate engines
return exact scores for the rows they return but may miss some rows (their
recall is measured, see ``benchmarks/speed.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..codes import SparseCodes

__all__ = ["SearchEngine", "check_topn", "empty_result", "sparse_query_arrays"]


class SearchEngine(ABC):
    """Top-n search over stored sparse codes (see the module docstring for the score)."""

    name: ClassVar[str]
    """Registry name, as passed to :func:`csr_index.engines.make_engine`."""
    exact: ClassVar[bool]
    """True when results equal the reference's (ties aside)."""

    def __init__(self, codes: SparseCodes) -> None:
        self.n = codes.n
        self.h = codes.h
        self.k = codes.k

    @abstractmethod
    def search_sparse(
        self, queries: SparseCodes, topn: int, scale: np.ndarray | None = None, offset: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``topn`` rows for sparse queries; only docs sharing a non-zero latent count."""

    @abstractmethod
    def search_dense(
        self, queries: np.ndarray, topn: int, scale: np.ndarray | None = None, offset: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``topn`` rows for dense queries (nq, h); every doc is scored."""

    @property
    def nbytes(self) -> int:
        """Bytes of memory the engine's own structures take (beyond the stored codes)."""
        return 0

    def options(self) -> dict[str, Any]:
        """The engine's settings, for logs and benchmark tables."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}(n={self.n}, h={self.h}{', ' if opts else ''}{opts})"


def check_topn(topn: int) -> int:
    """``topn`` as a positive int (ValueError otherwise)."""
    if isinstance(topn, bool) or not isinstance(topn, (int, np.integer)) or topn < 1:
        raise ValueError(f"topn must be a positive integer, got {topn!r}")
    return int(topn)


def empty_result(nq: int, topn: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, rows) with no result: (-inf, -1) everywhere."""
    return np.full((nq, topn), -np.inf, dtype=np.float32), np.full((nq, topn), -1, dtype=np.int64)


def sparse_query_arrays(queries: SparseCodes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of sparse queries as CSR arrays (indptr int64, latents int32, values float32)
    without the empty (zero) slots, each row's entries ordered by decreasing |value|.

    Duplicate latents within a row are not merged (a code never has them).
    """
    values = np.asarray(queries.values, dtype=np.float32)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    latents = np.take_along_axis(np.asarray(queries.indices), order, axis=1).astype(np.int32)
    keep = values != 0
    indptr = np.zeros(queries.n + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return indptr, np.ascontiguousarray(latents[keep]), np.ascontiguousarray(values[keep])
