"""One search over every segment of a snapshot: shortlist by an engine, exact re-rank, merge.

Each segment answers on its own (its engine, its deleted rows skipped, in a clustered segment
only the query's nearest clusters shortlisted, its originals for the re-rank) and the
per-segment top lists are merged by score: the scores of one mode are comparable across
segments, so the merged list is the best of the union.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .clusters import nearest_clusters
from .engines.base import empty_result, top_entries
from .rerank import exact_topn, rerank_topn
from .scoring import Score, score_rows

if TYPE_CHECKING:
    from .encoder import CSREncoder
    from .segment import EngineSpec
    from .store import Snapshot

__all__ = ["search_codes", "search_exact", "rescore_codes", "rescore_exact", "merge", "first_occurrences"]


def merge(parts: list[tuple[np.ndarray, np.ndarray]], nq: int, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``topk`` of several (D, ids) lists per query (each sorted or not), as one (D, ids)."""
    if not parts:
        return empty_result(nq, topk)
    D = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    if len(parts) == 1 and D.shape[1] == topk:
        return D, ids
    best, pos = top_entries(D, topk)
    return best, np.where(pos >= 0, np.take_along_axis(ids, np.maximum(pos, 0), axis=1), -1)


def _ids(segment_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, segment_ids[np.maximum(rows, 0)], -1)


def search_codes(snap: "Snapshot", encoder: "CSREncoder", score: Score, spec: "EngineSpec", xq: np.ndarray,
                 topk: int, query_k: int, rerank: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``max(topk, rerank)`` rows by ``score`` over all segments (each searched by the
    engine ``spec``, an approximate one with a work budget in proportion to the segment's share of
    the live rows), then, with ``rerank``, those re-scored exactly against the originals.
    The shortlist is merged across segments before the re-rank, so results do not depend on
    how the rows are split into segments."""
    if snap.ntotal == 0:
        return empty_result(len(xq), topk)
    batch = score.queries(encoder, xq, query_k)
    shortlist = max(topk, rerank)
    scores, where, rows = [], [], []
    for i, (seg, dead, live) in enumerate(zip(snap.segments, snap.deleted, snap.live_rows)):
        share = min(1.0, max(live, 1) / snap.ntotal)  # an approximate engine's budget: its share of the rows
        engine = seg.engine(spec)
        probes = (nearest_clusters(seg.clusters, xq, engine.probe_fraction)
                  if engine.clusters is not None else None)  # a clustered segment: the query's nearest clusters
        D, r = engine.search(batch, shortlist, score.scale(encoder, seg), dead, share=share, probes=probes)
        scores.append(D), rows.append(r), where.append(np.where(r >= 0, i, -1))
    if len(scores) == 1:  # one segment: its list is the shortlist
        D, where, rows = scores[0], where[0], rows[0]
    else:
        D, pos = top_entries(np.concatenate(scores, axis=1), shortlist)
        pick = np.maximum(pos, 0)
        where = np.where(pos >= 0, np.take_along_axis(np.concatenate(where, axis=1), pick, axis=1), -1)
        rows = np.where(pos >= 0, np.take_along_axis(np.concatenate(rows, axis=1), pick, axis=1), -1)
    if rerank:
        return _rerank(snap, xq, where, rows, topk)
    ids = np.full(rows.shape, -1, dtype=np.int64)
    for i, seg in enumerate(snap.segments):
        mine = where == i
        ids[mine] = seg.ids[rows[mine]]
    return D[:, :topk], ids[:, :topk]


def _rerank(snap: "Snapshot", xq: np.ndarray, where: np.ndarray, rows: np.ndarray, topk: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The best ``topk`` of (segment, row) candidates by exact score against the originals."""
    parts = []
    for i, seg in enumerate(snap.segments):
        mine = rows if len(snap.segments) == 1 else np.where(where == i, rows, -1)
        if len(snap.segments) == 1 or (mine >= 0).any():
            D, r = rerank_topn(xq, mine, seg.vectors, topk, scales=seg.scales)
            parts.append((D, _ids(seg.ids, r)))
    return merge(parts, len(xq), topk)


def search_exact(snap: "Snapshot", xq: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over every stored original (a flat scan in bounded memory)."""
    parts = []
    for seg, dead in zip(snap.segments, snap.deleted):
        D, rows = exact_topn(xq, seg.vectors, topk, dead, scales=seg.scales)
        parts.append((D, _ids(seg.ids, rows)))
    return merge(parts, len(xq), topk)


def first_occurrences(candidates: np.ndarray) -> np.ndarray:
    """Candidate ids (nq, R) with every repeat of an id within its row replaced by -1."""
    order = np.argsort(candidates, axis=1, kind="stable")  # a repeat sorts after its first occurrence
    ranked = np.take_along_axis(candidates, order, axis=1)
    repeat = np.zeros(ranked.shape, dtype=bool)
    repeat[:, 1:] = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
    out = np.empty_like(candidates)
    np.put_along_axis(out, order, np.where(repeat, -1, ranked), axis=1)
    return out


def _candidates(snap: "Snapshot", candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment, row) of candidate ids (nq, R); -1 stays -1, an unknown or deleted id is a KeyError."""
    where, rows = snap.locate(candidates)
    unknown = (where < 0) & (candidates >= 0)
    if unknown.any():
        raise KeyError(f"unknown ids: {np.unique(candidates[unknown])[:5].tolist()}")
    return where, rows


def rescore_exact(snap: "Snapshot", xq: np.ndarray, candidates: np.ndarray, topk: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The best ``topk`` of given candidate ids by exact score against the stored originals."""
    return _rerank(snap, xq, *_candidates(snap, candidates), topk)


def rescore_codes(snap: "Snapshot", encoder: "CSREncoder", score: Score, xq: np.ndarray, candidates: np.ndarray,
                  topk: int, query_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``topk`` of given candidate ids by a code-space ``score``: R * k work per query."""
    where, rows = _candidates(snap, candidates)
    batch = score.queries(encoder, xq, query_k)
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    for i, seg in enumerate(snap.segments):
        mine = np.where(where == i, rows, -1)
        if (mine >= 0).any():
            part = score_rows(batch, seg.codes, mine, score.scale(encoder, seg))
            scores = np.where(mine >= 0, part, scores)
    D, pos = top_entries(scores, topk)
    return D, np.where(pos >= 0, np.take_along_axis(candidates.astype(np.int64), np.maximum(pos, 0), axis=1), -1)
