"""The reference engine: scipy sparse products, one thread; the semantics every other engine is tested against."""

from __future__ import annotations

import numpy as np

from ..codes import SparseCodes
from .base import SearchEngine, top_entries

__all__ = ["ScipyEngine"]

BLOCK_BYTES = 1 << 28


class ScipyEngine(SearchEngine):
    """Exact scores by scipy SpGEMM (sparse terms x posting lists) or SpMM (dense queries),
    then partial selection (argpartition), in blocks of queries so the (block, n) score
    matrix stays under 256 MiB."""

    name = "scipy"
    exact = True

    def __init__(self, codes: SparseCodes) -> None:
        super().__init__(codes)
        self.rows = codes.to_scipy()
        self.postings = self.rows.T.tocsr()  # (h, n): row l lists the docs where latent l fires

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for m in (self.rows, self.postings) for a in (m.data, m.indices, m.indptr)))

    def _search(self, queries, topn, scale, skip, share=1.0):
        out_d, out_i = [], []
        step = max(1, min(queries.n, BLOCK_BYTES // (8 * max(1, self.n))))
        for s in range(0, queries.n, step):
            block = queries.rows(s, s + step)
            if block.dense is not None:
                scores = np.asarray(self.rows @ np.asarray(block.dense, dtype=np.float32).T).T
            else:
                hits = (block.terms.to_scipy() @ self.postings).tocoo()
                scores = np.full(hits.shape, -np.inf, dtype=np.float32)
                scores[hits.row, hits.col] = hits.data
            if block.offset is not None:
                scores = scores + np.asarray(block.offset, dtype=np.float32)[:, None]
            if scale is not None:
                scores = scores * np.asarray(scale, dtype=np.float32)[None, :]
            if skip is not None:
                scores[:, np.asarray(skip) != 0] = -np.inf
            d, i = top_entries(scores, topn)
            out_d.append(d)
            out_i.append(i)
        return np.concatenate(out_d), np.concatenate(out_i)
