"""The reference engine: scipy sparse products (:class:`csr_index.search.SparseScorer`)."""

from __future__ import annotations

import numpy as np

from ..codes import SparseCodes
from ..search import SparseScorer
from .base import SearchEngine, check_topn

__all__ = ["ScipyEngine"]


class ScipyEngine(SearchEngine):
    """Exact scores by scipy SpGEMM (sparse queries x posting lists) or SpMM (dense queries),
    then partial selection (argpartition). Single-threaded; the semantics every other engine
    is tested against."""

    name = "scipy"
    exact = True

    def __init__(self, codes: SparseCodes) -> None:
        super().__init__(codes)
        self.scorer = SparseScorer(codes)

    def search_sparse(self, queries, topn, scale=None, offset=None):
        return self.scorer.search_sparse(queries.to_scipy(), check_topn(topn), scale, offset)

    def search_dense(self, queries, topn, scale=None, offset=None):
        return self.scorer.search_dense(np.asarray(queries, dtype=np.float32), check_topn(topn), scale, offset)

    @property
    def nbytes(self) -> int:
        rows, posts = self.scorer.rows, self.scorer.postings
        return int(sum(a.nbytes for m in (rows, posts) for a in (m.data, m.indices, m.indptr)))
