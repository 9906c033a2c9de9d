"""Exact CPU scoring of stored sparse codes, and exact re-ranking of a shortlist.

Scores are computed for blocks of queries so memory stays bounded
(``BLOCK_BYTES``), and each row's best entries are found by partial selection
(``np.argpartition``), never a full sort.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .codes import SparseCodes

__all__ = ["top_entries", "SparseScorer", "rerank_exact", "score_rows"]

BLOCK_BYTES = 1 << 28


def top_entries(scores: np.ndarray, topn: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``topn`` finite entries of each row of ``scores`` (nq, n), sorted descending.

    Returns (D float32, columns int64), both (nq, topn); where a row has fewer than
    ``topn`` finite entries the rest is padded with (-inf, -1).
    """
    nq, n = scores.shape
    take = min(topn, n)
    if take < n:
        cols = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    else:
        cols = np.broadcast_to(np.arange(n), (nq, n))
    vals = np.take_along_axis(scores, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    cols = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    cols[~np.isfinite(vals)] = -1
    vals[cols < 0] = -np.inf
    if take < topn:
        pad = topn - take
        vals = np.pad(vals, ((0, 0), (0, pad)), constant_values=-np.inf)
        cols = np.pad(cols, ((0, 0), (0, pad)), constant_values=-1)
    return vals, cols


class SparseScorer:
    """Exact scores of queries in code space against a fixed set of stored sparse codes.

    A query is a row vector q in R^h, sparse (a code, or a projection cut to k
    latents) or dense (the full projection). Its score against doc d is
    ``(q . z_d + offset_q) * scale_d``, with an optional per-doc ``scale`` (1/norm
    for cosine) and per-query ``offset``.

    Stored codes are kept as rows (forward index, for dense queries, which touch
    every doc) and as columns, i.e. posting lists (inverted index, for sparse
    queries, which touch only the docs that share a latent with the query; the
    others are not results).
    """

    def __init__(self, codes: SparseCodes) -> None:
        self.n = codes.n
        self.h = codes.h
        self.rows = codes.to_scipy()
        self.postings = self.rows.T.tocsr()  # (h, n): row l lists the docs where latent l fires

    def _block(self, nq: int) -> int:
        return max(1, min(nq, BLOCK_BYTES // (8 * max(1, self.n))))

    def search_sparse(
        self, queries: sp.csr_array, topn: int, scale: np.ndarray | None = None, offset: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``topn`` docs for sparse queries (nq, h), term at a time over the posting lists."""
        out_d, out_i = [], []
        step = self._block(queries.shape[0])
        for s in range(0, queries.shape[0], step):
            hits = (queries[s : s + step] @ self.postings).tocoo()
            data = hits.data.astype(np.float32)
            if offset is not None:
                data = data + offset[s + hits.row]
            if scale is not None:
                data = data * scale[hits.col]
            scores = np.full(hits.shape, -np.inf, dtype=np.float32)
            scores[hits.row, hits.col] = data
            d, i = top_entries(scores, topn)
            out_d.append(d)
            out_i.append(i)
        return np.concatenate(out_d), np.concatenate(out_i)

    def search_dense(
        self, queries: np.ndarray, topn: int, scale: np.ndarray | None = None, offset: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``topn`` docs for dense queries (nq, h); every doc is scored."""
        out_d, out_i = [], []
        step = self._block(queries.shape[0])
        for s in range(0, queries.shape[0], step):
            scores = np.asarray(self.rows @ queries[s : s + step].T).T
            if offset is not None:
                scores = scores + offset[s : s + step, None]
            if scale is not None:
                scores = scores * scale[None, :]
            d, i = top_entries(scores, topn)
            out_d.append(d)
            out_i.append(i)
        return np.concatenate(out_d), np.concatenate(out_i)


def rerank_exact(
    queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, topn: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate rows (nq, R; -1 = none) by exact inner product with ``vectors`` (n, d).

    Reads only the R candidate rows per query (R * d work), like faiss IndexRefineFlat.
    """
    safe = np.maximum(candidates, 0)
    cand = vectors[safe.ravel()].reshape(*safe.shape, vectors.shape[1]).astype(np.float32)
    scores = np.einsum("qrd,qd->qr", cand, queries)
    scores[candidates < 0] = -np.inf
    d, pos = top_entries(scores, topn)
    rows = np.where(pos >= 0, np.take_along_axis(candidates, np.maximum(pos, 0), axis=1), -1)
    return d, rows


def score_rows(
    queries: np.ndarray | SparseCodes,
    codes: SparseCodes,
    rows: np.ndarray,
    scale: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    block: int = 256,
) -> np.ndarray:
    """Scores (nq, R) of given stored rows (nq, R; -1 = none, scored -inf) per query.

    Same definition as :class:`SparseScorer`: ``(q . z_d + offset_q) * scale_d``; for
    sparse queries a doc sharing no latent with the query scores -inf (not a result); a
    slot whose value is 0 is empty on either side, as in ``SparseCodes.to_scipy``.
    Costs R * k per query: the doc codes are gathered, the query is looked up densely.
    """
    sparse = isinstance(queries, SparseCodes)
    nq = rows.shape[0]
    out = np.full(rows.shape, -np.inf, dtype=np.float32)
    for s in range(0, nq, block):
        r = rows[s : s + block]
        safe = np.maximum(r, 0)
        if sparse:
            part = SparseCodes(queries.indices[s : s + block], queries.values[s : s + block], queries.h)
            qdense = part.to_dense()
            qmask = qdense != 0
        else:
            qdense = np.asarray(queries[s : s + block], dtype=np.float32)
        didx = codes.indices[safe].astype(np.int64)  # (b, R, k)
        dval = codes.values[safe].astype(np.float32)
        flat_idx = didx.reshape(len(r), -1)
        looked_up = np.take_along_axis(qdense, flat_idx, axis=1).reshape(didx.shape)
        scores = (looked_up * dval).sum(axis=2, dtype=np.float32)
        if offset is not None:
            scores += offset[s : s + block, None]
        if scale is not None:
            scores *= scale[safe]
        invalid = r < 0
        if sparse:
            shared = np.take_along_axis(qmask, flat_idx, axis=1).reshape(didx.shape) & (dval > 0)
            invalid |= ~shared.any(axis=2)
        scores[invalid] = -np.inf
        out[s : s + block] = scores
    return out
