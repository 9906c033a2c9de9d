"""The interface every search engine implements, its query type, and the result helpers they share.

An engine holds a fixed set of stored k-sparse codes z_d (n, h) and answers top-n
queries in code space. A query batch (:class:`QueryBatch`) has sparse ``terms`` (the
query's latents with their weights) and, optionally, a ``dense`` row in R^h:

* without ``dense`` the score is ``(terms . z_d + offset_q) * scale_d`` and only the
  docs sharing a non-zero latent with the terms are results (code x code scoring);
* with ``dense`` the score is ``(dense . z_d + offset_q) * scale_d`` over every doc
  (asymmetric scoring); the terms then only say where a shortlist should look.

``scale`` (per doc, e.g. 1 / norm under cosine) and ``offset`` (per query) are
optional; ``skip`` (uint8 per doc) marks deleted rows, which are never returned.
Engines return ``(D, rows)``: float32 (nq, topn) scores sorted descending and int64
storage rows, padded with (-inf, -1). Exact engines return the reference's top-n
(ties aside); approximate engines return exact scores for the rows they return but
may miss rows (their recall is measured in ``benchmarks/speed.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit

from ..codes import SparseCodes
from ..validation import check_positive
from .kernels import _emit, _offer, query_csr

__all__ = ["QueryBatch", "SearchEngine", "empty_result", "top_entries", "sparse_query_arrays", "kernel_vector"]


@dataclass(frozen=True)
class QueryBatch:
    """Queries in code space, as engines take them (see the module docstring)."""

    terms: SparseCodes
    dense: np.ndarray | None = None
    offset: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.terms.n

    def rows(self, start: int, stop: int) -> "QueryBatch":
        """The queries ``start:stop`` (views, no copy)."""
        terms = SparseCodes(self.terms.indices[start:stop], self.terms.values[start:stop], self.terms.h)
        dense = None if self.dense is None else self.dense[start:stop]
        offset = None if self.offset is None else self.offset[start:stop]
        return QueryBatch(terms, dense, offset)


class SearchEngine(ABC):
    """Top-n search over stored sparse codes (see the module docstring for the score)."""

    name: ClassVar[str]
    """Registry name, as passed to :func:`csr_index.engines.make_engine`."""
    exact: ClassVar[bool]
    """True when results equal the reference's (ties aside)."""
    takes_clusters: ClassVar[bool] = False
    """True when the engine can be built over clustered rows and search only some clusters."""
    clusters: np.ndarray | None = None
    """Cluster c holds rows ``clusters[c]:clusters[c + 1]`` (an engine built over clustered rows)."""

    def __init__(self, codes: SparseCodes) -> None:
        self.n = codes.n
        self.h = codes.h
        self.k = codes.k

    def search(
        self, queries: QueryBatch, topn: int, scale: np.ndarray | None = None, skip: np.ndarray | None = None,
        share: float = 1.0, probes: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``topn`` rows of each query (see the module docstring). ``share``: the fraction of a
        larger collection these rows are (one segment of several); approximate engines scale
        their work budget by it, exact ones ignore it. ``probes`` (nq, P): the clusters, ascending,
        each query's shortlist reads (an engine built with ``clusters``)."""
        topn = check_positive(topn, "topn")
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self._check(queries)
        if self.n == 0 or queries.n == 0:
            return empty_result(queries.n, topn)
        if skip is not None and np.shape(skip) != (self.n,):
            raise ValueError(f"skip must have shape ({self.n},), got {np.shape(skip)}")
        if probes is None:
            return self._search(queries, topn, scale, skip, share)
        if self.clusters is None:
            raise ValueError(f"this {self.name} engine holds no clusters: it takes no probes")
        probes = np.ascontiguousarray(probes, dtype=np.int64)
        count = len(self.clusters) - 1
        if probes.ndim != 2 or probes.shape[0] != queries.n or probes.shape[1] == 0:
            raise ValueError(f"probes must have shape ({queries.n}, P > 0), got {probes.shape}")
        if probes.min() < 0 or probes.max() >= count or (np.diff(probes, axis=1) <= 0).any():
            raise ValueError(f"probes must be ascending cluster numbers in 0..{count - 1}")
        return self._search(queries, topn, scale, skip, share, probes=probes)

    @abstractmethod
    def _search(
        self, queries: QueryBatch, topn: int, scale: np.ndarray | None, skip: np.ndarray | None, share: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` on checked, non-empty input."""

    def _check(self, queries: QueryBatch) -> None:
        terms = queries.terms
        if terms.h != self.h:
            raise ValueError(f"queries live in R^{terms.h}, the stored codes in R^{self.h}")
        if terms.indices.size and int(terms.indices.max()) >= self.h:
            raise ValueError(f"a query latent index exceeds h={self.h}")
        if queries.dense is not None and (queries.dense.ndim != 2 or queries.dense.shape != (terms.n, self.h)):
            raise ValueError(f"dense queries must have shape ({terms.n}, {self.h}), got {queries.dense.shape}")
        if queries.offset is not None and np.shape(queries.offset) != (terms.n,):
            raise ValueError(f"offset must have shape ({terms.n},), got {np.shape(queries.offset)}")

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


def empty_result(nq: int, topn: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, rows) with no result: (-inf, -1) everywhere."""
    return np.full((nq, topn), -np.inf, dtype=np.float32), np.full((nq, topn), -1, dtype=np.int64)


def top_entries(scores: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``topn`` finite entries of each row of ``scores`` (nq, n), sorted descending.

    Returns (D float32, columns int64), both (nq, topn), padded with (-inf, -1) where a
    row has fewer finite entries. One compiled pass with a bounded heap per row, never a
    sort of the row: a search merges a few short lists per query, where the numpy
    equivalent (argpartition, argsort, five gathers) cost ~0.1 ms per call.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (nq, n), got shape {scores.shape}")
    topn = check_positive(topn, "topn")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float32)
    out_d, out_i = empty_result(scores.shape[0], topn)
    _top_rows(np.ascontiguousarray(scores), out_d, out_i)
    return out_d, out_i


@njit(cache=True)
def _top_rows(scores, out_d, out_i):
    topn = out_d.shape[1]
    hv = np.empty(topn, dtype=np.float32)
    hi = np.empty(topn, dtype=np.int64)
    for q in range(scores.shape[0]):
        size = 0
        for j in range(scores.shape[1]):
            v = np.float32(scores[q, j])
            if np.isfinite(v):
                size = _offer(hv, hi, size, v, j)
        _emit(hv, hi, size, out_d[q], out_i[q])


def sparse_query_arrays(terms: SparseCodes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query terms as CSR arrays (indptr int64, latents int32, values float32) without the
    empty (zero) slots, each row's entries ordered by decreasing |value|.

    Duplicate latents within a row are not merged (a code never has them).
    """
    return query_csr(np.ascontiguousarray(terms.indices), np.ascontiguousarray(terms.values, dtype=np.float32))


def kernel_vector(x: np.ndarray | None, length: int, name: str, dtype: Any = np.float32) -> np.ndarray:
    """An optional per-query / per-doc vector as the compiled kernels take it (empty = none)."""
    if x is None:
        return np.empty(0, dtype=dtype)
    arr = np.ascontiguousarray(x, dtype=dtype)
    if arr.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {arr.shape}")
    return arr
