"""Exact CPU engine: posting lists scored term at a time by a compiled (numba) kernel."""

from __future__ import annotations

import logging
import threading
import time

import numba
import numpy as np

from ..codes import SparseCodes
from ..threads import num_threads
from ..validation import check_positive
from . import kernels
from .base import QueryBatch, SearchEngine, empty_result, kernel_vector, sparse_query_arrays
from .postings import ForwardIndex, Postings

__all__ = ["InvertedIndexEngine"]

log = logging.getLogger(__name__)


class InvertedIndexEngine(SearchEngine):
    """Exact search over an inverted index: for each query, the posting lists of its
    non-zero terms are added into a per-thread accumulator (term at a time), and the
    top-n of the touched docs is kept by a bounded heap (no sort of all scores).
    Queries with a dense part scan the forward index instead (the codes themselves,
    k look-ups per doc, 16 queries per pass): every doc is scored.

    A batch is split into one chunk of queries per thread (``threads``; None: numba's
    current thread count, i.e. all cores unless ``numba.set_num_threads`` says less); a
    single query runs serially.

    ``values``: how the engine holds code values, "float32" or "float16" (docs + values: 6
    instead of 8 bytes per posting, 2 instead of 4 per forward slot); None (default) follows
    the codes, so float16 codes are read in place, not copied. "float16" over float32 codes
    rounds their values, so results are then exact only up to that rounding.
    """

    name = "inverted"
    exact = True

    def __init__(self, codes: SparseCodes, threads: int | None = None, values: str | None = None) -> None:
        super().__init__(codes)
        self.threads = check_positive(threads, "threads", allow_none=True)
        if values is None:
            values = "float16" if codes.values.dtype == np.float16 else "float32"
        self.values = values
        start = time.perf_counter()
        self.list_limit = self._list_limit(codes)
        """Entries each posting list keeps (None: all)."""
        self.postings = Postings.build(codes, values=values, limit=self.list_limit)
        self.forward = ForwardIndex.build(codes, values=values)
        self._forward_copies = sum(a.nbytes for a in (self.forward.idx, self.forward.vals)  # views of the codes are free
                                   if not (np.may_share_memory(a, codes.indices) or np.may_share_memory(a, codes.values)))
        self._local = threading.local()
        log.debug("%s built in %.3f s (%d postings)", type(self).__name__, time.perf_counter() - start,
                  len(self.postings.docs))

    def _list_limit(self, codes: SparseCodes) -> int | None:
        """Entries each posting list keeps (None: all; see :meth:`Postings.build`)."""
        return None

    @property
    def nbytes(self) -> int:
        return self.postings.nbytes + self._forward_copies

    def options(self) -> dict:
        return {"threads": self.threads, "values": self.values}

    def workers(self, nq: int) -> int:
        """Threads a batch of ``nq`` queries is split over: ``threads``, or numba's current count
        when None (``numba.set_num_threads``), capped by the size of numba's pool and by ``nq``
        (a single query runs serially, without asking numba)."""
        if nq <= 1:
            return 1
        wanted = num_threads() if self.threads is None else self.threads
        return max(1, min(wanted, numba.config.NUMBA_NUM_THREADS, nq))

    def workspace(self, nq: int) -> kernels.Workspace:
        """This thread's scratch for a batch of ``nq`` queries (allocated on first use, then reused)."""
        chunks = self.workers(nq)
        work = getattr(self._local, "work", None)
        if work is None or work.acc.shape[0] < chunks:
            work = self._local.work = kernels.Workspace.empty(chunks, self.n, self.h)
        return work

    def _arrays(self, queries: QueryBatch, scale, skip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (kernel_vector(queries.offset, queries.n, "offset"), kernel_vector(scale, self.n, "scale"),
                kernel_vector(skip, self.n, "skip", np.uint8))

    def _search(self, queries, topn, scale, skip, share=1.0):
        out_d, out_i = empty_result(queries.n, topn)
        off, sc, sk = self._arrays(queries, scale, skip)
        if queries.dense is not None:
            f = self.forward
            dense = np.ascontiguousarray(queries.dense, dtype=np.float32)
            kernels.forward_topn(self.workers(queries.n), dense, f.idx, f.vals, f.lut, off, sc, sk, out_d, out_i)
        else:
            qptr, qlat, qval = sparse_query_arrays(queries.terms)
            p = self.postings
            kernels.postings_topn(self.workers(queries.n), qptr, qlat, qval, p.indptr, p.docs, p.vals, p.lut, self.n,
                                  off, sc, sk, self.workspace(queries.n), out_d, out_i)
        return out_d, out_i
