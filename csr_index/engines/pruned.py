"""Approximate CPU engine: a pruned inverted index builds a shortlist, the forward index scores it exactly."""

from __future__ import annotations

import numpy as np

from ..codes import SparseCodes
from . import kernels
from .base import check_topn, empty_result, sparse_query_arrays
from .inverted import InvertedIndexEngine

__all__ = ["PrunedEngine"]


def _positive_int_or_none(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


class PrunedEngine(InvertedIndexEngine):
    """Fast approximate search in two stages, as Seismic does for learned sparse vectors.

    1. Shortlist: only the ``query_cut`` largest-magnitude query terms are looked up,
       each in at most the ``list_cut`` strongest entries of its posting list (lists are
       sorted by decreasing value, so this is static posting pruning); the ``candidates``
       best docs by that partial score are kept.
    2. The shortlist is scored exactly with the whole query against the forward index
       (k look-ups per doc), and the top-n is returned.

    Returned scores are exact (those of the reference); recall depends on the three
    knobs and is measured in ``benchmarks/speed.py``. With every knob ``None`` the
    engine is exact. A dense query (nq, h) takes its shortlist from its ``query_cut``
    largest positive coordinates and is scored exactly over all h coordinates, so it
    costs the shortlist, not a scan (``query_cut`` must then be set).
    """

    name = "pruned"
    exact = False
    _order = "value"

    def __init__(
        self,
        codes: SparseCodes,
        query_cut: int | None = 8,
        list_cut: int | None = None,
        candidates: int | None = 1000,
        threads: int | None = None,
        values: str = "float32",
    ) -> None:
        self.query_cut = _positive_int_or_none(query_cut, "query_cut")
        self.list_cut = _positive_int_or_none(list_cut, "list_cut")
        self.candidates = _positive_int_or_none(candidates, "candidates")
        super().__init__(codes, threads=threads, values=values)

    def options(self) -> dict:
        return {"query_cut": self.query_cut, "list_cut": self.list_cut, "candidates": self.candidates,
                **super().options()}

    def _run(self, qptr, qlat, qval, dense, nq, topn, scale, offset):
        out_d, out_i = empty_result(nq, topn)
        if self.n == 0 or nq == 0:
            return out_d, out_i
        off, sc = self._vectors(nq, scale, offset)
        cut = self.h if self.query_cut is None else min(self.query_cut, self.h)
        limit = self.n if self.list_cut is None else min(self.list_cut, self.n)
        shortlist = self.n if self.candidates is None else min(self.n, max(self.candidates, topn))
        p, f = self.postings, self.forward
        kernels.pruned_topn(self.workers, qptr, qlat, qval, dense, cut, limit, shortlist, p.indptr, p.docs, p.vals,
                            f.idx, f.vals, p.lut, self.n, self.h, off, sc, out_d, out_i)
        return out_d, out_i

    def search_sparse(self, queries, topn, scale=None, offset=None):
        topn = check_topn(topn)
        qptr, qlat, qval = sparse_query_arrays(self._checked(queries))
        return self._run(qptr, qlat, qval, np.empty((0, self.h), np.float32), queries.n, topn, scale, offset)

    def search_dense(self, queries, topn, scale=None, offset=None):
        topn = check_topn(topn)
        q = self._checked_dense(queries)
        if self.query_cut is None:  # no shortlist to take: exact scan
            return super().search_dense(q, topn, scale, offset)
        c = min(self.query_cut, self.h)
        lat = np.argpartition(-q, c - 1, axis=1)[:, :c] if c < self.h else np.broadcast_to(np.arange(self.h), q.shape)
        val = np.take_along_axis(q, lat, axis=1)
        order = np.argsort(-val, axis=1, kind="stable")
        lat = np.take_along_axis(lat, order, axis=1)
        val = np.take_along_axis(val, order, axis=1)
        keep = val > 0
        qptr = np.zeros(len(q) + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=qptr[1:])
        qlat = np.ascontiguousarray(lat[keep], dtype=np.int32)
        qval = np.ascontiguousarray(val[keep], dtype=np.float32)
        return self._run(qptr, qlat, qval, q, len(q), topn, scale, offset)
