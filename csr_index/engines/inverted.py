"""Exact CPU engine: posting lists scored term at a time by a compiled (numba) kernel."""

from __future__ import annotations

import logging
import time

import numba
import numpy as np

from ..codes import SparseCodes
from . import kernels
from .base import SearchEngine, check_topn, empty_result, sparse_query_arrays
from .postings import ForwardIndex, Postings

__all__ = ["InvertedIndexEngine", "as_kernel_vector", "check_threads"]

log = logging.getLogger(__name__)


def check_threads(threads: int | None) -> int | None:
    """``threads`` as a positive int, or None (numba's current thread count at each search)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def as_kernel_vector(x: np.ndarray | None, length: int, name: str) -> np.ndarray:
    """An optional per-query / per-doc float32 vector as the kernels take it (empty = none)."""
    if x is None:
        return np.empty(0, dtype=np.float32)
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {arr.shape}")
    return arr


class InvertedIndexEngine(SearchEngine):
    """Exact search over an inverted index: for each query, the posting lists of its
    non-zero latents are added into a per-thread accumulator (term at a time), and the
    top-n of the touched docs is kept by a bounded heap (no sort of all scores).

    A batch is split into one chunk of queries per thread (``threads``; None: numba's
    current thread count, i.e. all cores unless ``numba.set_num_threads`` says less); a
    single query runs serially. Dense queries scan the forward index (the
    codes themselves, k look-ups per doc).

    ``values="float16"`` halves the memory of the values (docs + values: 6 instead of
    8 bytes per posting); it rounds stored values to float16, so results are exact only
    for codes stored as float16.
    """

    name = "inverted"
    exact = True
    _order = "doc"  # posting-list order, see Postings.build

    def __init__(self, codes: SparseCodes, threads: int | None = None, values: str = "float32") -> None:
        super().__init__(codes)
        self.threads = check_threads(threads)
        self.values = values
        start = time.perf_counter()
        self.postings = Postings.build(codes, order=self._order, values=values)
        self.forward = ForwardIndex.build(codes, values=values)
        log.info("%s built in %.3f s (%d postings)", type(self).__name__, time.perf_counter() - start,
                 len(self.postings.docs))

    @property
    def nbytes(self) -> int:
        return self.postings.nbytes + self.forward.nbytes

    def options(self) -> dict:
        return {"threads": self.threads, "values": self.values}

    @property
    def workers(self) -> int:
        """Threads a batch is split over: ``threads``, or numba's current count when None
        (``numba.set_num_threads``), capped by the size of numba's pool."""
        wanted = numba.get_num_threads() if self.threads is None else self.threads
        return max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))

    def _vectors(self, nq: int, scale, offset) -> tuple[np.ndarray, np.ndarray]:
        return as_kernel_vector(offset, nq, "offset"), as_kernel_vector(scale, self.n, "scale")

    def search_sparse(self, queries, topn, scale=None, offset=None):
        topn = check_topn(topn)
        out_d, out_i = empty_result(queries.n, topn)
        if self.n == 0 or queries.n == 0:
            return out_d, out_i
        qptr, qlat, qval = sparse_query_arrays(self._checked(queries))
        off, sc = self._vectors(queries.n, scale, offset)
        p = self.postings
        # cut and limit are the widest possible (every term, whole lists); never int64 max: overflow in the kernel
        kernels.postings_topn(self.workers, qptr, qlat, qval, self.h, self.n, p.indptr, p.docs, p.vals, p.lut,
                              self.n, off, sc, out_d, out_i)
        return out_d, out_i

    def search_dense(self, queries, topn, scale=None, offset=None):
        topn = check_topn(topn)
        q = self._checked_dense(queries)
        out_d, out_i = empty_result(len(q), topn)
        if self.n == 0 or len(q) == 0:
            return out_d, out_i
        off, sc = self._vectors(len(q), scale, offset)
        f = self.forward
        kernels.forward_topn(self.workers, q, f.idx, f.vals, f.lut, off, sc, out_d, out_i)
        return out_d, out_i

    def _checked(self, queries: SparseCodes) -> SparseCodes:
        if queries.h != self.h:
            raise ValueError(f"queries live in R^{queries.h}, the stored codes in R^{self.h}")
        if queries.n and queries.indices.size and int(queries.indices.max()) >= self.h:
            raise ValueError(f"a query latent index exceeds h={self.h}")
        return queries

    def _checked_dense(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.h:
            raise ValueError(f"dense queries must have shape (nq, {self.h}), got {q.shape}")
        return q
