"""Scoring modes: how queries become engine inputs, and what each doc's score is scaled by.

Every mode scores doc d as ``(q . z_d + offset_q) * scale_d`` over the stored codes z_d:

* ``code``: q = the query's own k-sparse code, weighted like :meth:`CSREncoder.weigh`
  on both sides; scale = 1 / ||z_d * w|| under cosine. The score is the inner product of
  ``query_code_vectors`` and ``code_vectors``, what an inverted index or Qdrant computes,
  and only docs sharing a latent with the query code are results.
* ``asymmetric``: q = x_q W^T, the dense projection of the query, and offset =
  x_q . pre_bias, so the score is x_q . decode(z_d), times 1 / ||decode(z_d)|| under cosine:
  the query against each doc's reconstruction. The query's own code only tells a
  shortlist engine which posting lists to read.

The third score, ``exact`` (inner product with the stored originals), is not a code-space
score: see :mod:`csr_index.rerank`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from .budgets import RERANK_GROWTH, size_factor
from .codes import SparseCodes
from .engines import QueryBatch

if TYPE_CHECKING:
    from .encoder import CSREncoder
    from .segment import Segment

__all__ = ["Score", "CodeScore", "AsymmetricScore", "SCORES", "score_rows", "default_rerank"]


def default_rerank(score: str, topk: int, ntotal: int = 0) -> int:
    """How many shortlist candidates a search re-ranks exactly by default: ``max(100, 10 * topk)``
    after an asymmetric shortlist, three times that after a code x code one (``score="code"``, and
    every Qdrant search), whose candidates hold fewer of the true neighbours (on SciFact the code
    top 100 re-ranked keeps 97.6 % of dense NDCG@10, the top 300 99.8 %); for a collection of
    ``ntotal`` > SIZE_REFERENCE docs, times ``size_factor(ntotal, RERANK_GROWTH)`` (x4 at 1M).
    On the 1M set a re-rank of 200 instead of 100 raised recall@10 from 0.950 to 0.963 with
    3,200 candidates."""
    return int(round((3 if score == "code" else 1) * max(100, 10 * topk) * size_factor(ntotal, RERANK_GROWTH)))


def _inverse(norms: np.ndarray) -> np.ndarray:
    """1 / norm, with 0 for an all-zero code (it then scores 0 against everything)."""
    norms = np.asarray(norms, dtype=np.float32)
    return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)


class Score(ABC):
    """A scoring mode: turns prepared queries into a :class:`QueryBatch` and gives per-doc scales."""

    name: str

    @abstractmethod
    def queries(self, encoder: "CSREncoder", xq: np.ndarray, query_k: int) -> QueryBatch:
        """Engine input for prepared queries ``xq`` (nq, d) with ``query_k`` latents per query code."""

    @abstractmethod
    def doc_scale(self, encoder: "CSREncoder", segment: "Segment") -> np.ndarray | None:
        """Per-doc scale of a segment's rows (None: 1)."""

    def scale(self, encoder: "CSREncoder", segment: "Segment") -> np.ndarray | None:
        """:meth:`doc_scale`, cached by the segment."""
        return segment.scale(self.name, lambda seg: self.doc_scale(encoder, seg))


class CodeScore(Score):
    name = "code"

    def queries(self, encoder, xq, query_k):
        codes = encoder.encode_prepared(xq, query_k)[0]
        weighted = encoder.weigh(codes)
        # the engine holds raw codes: the query carries the doc side's weight too
        terms = SparseCodes(weighted.indices, weighted.values * encoder.latent_weight[weighted.indices], encoder.h)
        return QueryBatch(terms)

    def doc_scale(self, encoder, segment):
        if encoder.metric != "cosine":
            return None
        codes = segment.codes
        weights = encoder.latent_weight[codes.indices]
        return _inverse(np.linalg.norm(codes.values.astype(np.float32) * weights, axis=1))


class AsymmetricScore(Score):
    name = "asymmetric"

    def queries(self, encoder, xq, query_k):
        projected, offset, support = encoder.project(xq, query_k)
        empty = support < 0  # a slot ReLU empties reads no posting list
        support[empty] = 0
        terms = np.take_along_axis(projected, support, axis=1)
        terms[empty] = 0.0
        return QueryBatch(SparseCodes(support.astype(np.int32), terms, encoder.h), dense=projected, offset=offset)

    def doc_scale(self, encoder, segment):
        return _inverse(segment.norms) if encoder.metric == "cosine" else None


SCORES: dict[str, Score] = {s.name: s for s in (AsymmetricScore(), CodeScore())}


def score_rows(queries: QueryBatch, codes: SparseCodes, rows: np.ndarray, scale: np.ndarray | None,
               block: int = 256) -> np.ndarray:
    """Scores (nq, R) of given stored rows (nq, R; -1 = none, scored -inf) per query, by the
    definition of :mod:`csr_index.engines.base`; R * k work per query, (block, R, k) memory."""
    nq = rows.shape[0]
    out = np.full(rows.shape, -np.inf, dtype=np.float32)
    for s in range(0, nq, block):
        part = queries.rows(s, s + block)
        r = rows[s : s + block]
        safe = np.maximum(r, 0)
        qdense = part.terms.to_dense() if part.dense is None else np.asarray(part.dense, dtype=np.float32)
        didx = codes.indices[safe].astype(np.int64)  # (b, R, k)
        dval = codes.values[safe].astype(np.float32)
        flat_idx = didx.reshape(len(r), -1)
        scores = (np.take_along_axis(qdense, flat_idx, axis=1).reshape(didx.shape) * dval).sum(axis=2, dtype=np.float32)
        if part.offset is not None:
            scores += np.asarray(part.offset, dtype=np.float32)[:, None]
        if scale is not None:
            scores *= scale[safe]
        invalid = r < 0
        if part.dense is None:
            shared = np.take_along_axis(qdense != 0, flat_idx, axis=1).reshape(didx.shape) & (dval > 0)
            invalid |= ~shared.any(axis=2)
        scores[invalid] = -np.inf
        out[s : s + block] = scores
    return out
