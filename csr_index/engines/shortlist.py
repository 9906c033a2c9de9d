"""Compiled (numba) kernels of the pruned engine: a sparse shortlist, then exact scores.

Per query: the first ``cut`` query terms' posting lists (doc-ordered, statically pruned when
the engine was built) are added into a dense per-thread accumulator, only the runs of the
clusters the query probes (a clustered segment's nearest ones, see :mod:`csr_index.clusters`;
otherwise one cluster holds all n docs); the ``candidates`` best docs of those clusters by
that partial score are selected in linear time (:func:`_shortlist`); those are scored
exactly against the forward index, prefetching the rows a few candidates ahead; a bounded
heap keeps the top-n. Array conventions are those of :mod:`csr_index.engines.kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..threads import use_threadsafe_layer
from .kernels import PREFETCH_AHEAD, _emit, _forward_score, _heap_push, _offer, _query_offset, prefetch, value_of

__all__ = ["pruned_topn", "list_runs"]


@njit(cache=True)
def list_runs(indptr, docs, starts):
    """Where each cluster's run begins in each posting list: int32 (h, C + 1), ``runs[lat, c]``
    the first position of list ``lat`` (from its start) holding a doc >= ``starts[c]``. Lists are
    doc-ordered and cluster c holds docs ``starts[c]:starts[c + 1]``, so that run is
    ``runs[lat, c]:runs[lat, c + 1]``."""
    h, nc = indptr.shape[0] - 1, starts.shape[0]
    runs = np.empty((h, nc), dtype=np.int32)
    for lat in range(h):
        lo, hi = indptr[lat], indptr[lat + 1]
        e = lo
        for c in range(nc):
            while e < hi and docs[e] < starts[c]:
                e += 1
            runs[lat, c] = e - lo
    return runs


@njit(cache=True)
def _add_lists(q, qptr, qlat, qval, cut, indptr, docs, vals, lut, probes, runs, acc):
    """Add the first ``cut`` query terms' products over their (doc-ordered) posting lists into
    ``acc``, only the runs of the clusters ``probes`` (see :func:`list_runs`): each run read
    front to back, no touched-doc list."""
    for p in range(qptr[q], min(qptr[q + 1], qptr[q] + cut)):
        lat = qlat[p]
        w = qval[p]
        base = indptr[lat]
        for c in probes:  # unsigned positions and docs: no negative-index checks in the loop
            for e in range(np.uint64(base + runs[lat, c]), np.uint64(base + runs[lat, c + 1])):
                acc[np.uint32(docs[e])] += w * value_of(vals, lut, e)


LOWEST = np.float32(-3.4028235e38)
"""The smallest finite float32: a threshold every touched doc passes."""
SAMPLE_FRACTION = 16
"""One doc in SAMPLE_FRACTION is sampled to estimate :func:`_shortlist`'s threshold."""
RUNS_PER_CLUSTER = 8
"""At least this many sample runs in each probed cluster: its rows keep their insertion order, and
neighbours in that order can score alike (on the 1M set, one run at each cluster's start sampled
mostly the first 100k rows, and 15 % of the queries fell back to the exact threshold)."""
SAMPLE_CHUNKS = 64
"""The sample is this many runs of neighbouring docs, spread evenly over the rows: read as
streams. One doc every 16 read every cache line of the accumulator; runs of 16 docs every 256
missed the cache on every run (0.35 and 0.85 ms of the selection at 1M)."""


@njit(cache=True, inline="always")
def _partial(acc, off, scale, d):
    """Doc ``d``'s partial score: ``(acc[d] + off) * scale[d]`` (no scale when ``scale`` is empty)."""
    if scale.shape[0] > 0:
        return (acc[d] + off) * scale[d]
    return acc[d] + off


@njit(cache=True, inline="always")
def _live(acc, skip, d):
    """Whether doc ``d`` is a candidate: touched by the terms (``acc[d] != 0``) and not skipped."""
    return acc[d] != 0.0 and (skip.shape[0] == 0 or skip[d] == 0)


@njit(cache=True)
def _above(acc, off, scale, tau, lo, hi, rows, m):
    """Docs ``lo:hi`` whose partial score is >= ``tau`` appended to ``rows`` from ``m``; returns
    the new count. The doc numbers are unsigned: numba then drops its negative-index check from
    each read, which made this loop 1.5 times slower (100k docs)."""
    if scale.shape[0] > 0:
        for d in range(np.uint64(lo), np.uint64(hi)):
            if (acc[d] + off) * scale[d] >= tau:
                rows[m] = d
                m += 1
    else:
        for d in range(np.uint64(lo), np.uint64(hi)):
            if acc[d] + off >= tau:
                rows[m] = d
                m += 1
    return m


@njit(cache=True)
def _collect(acc, off, scale, skip, tau, probes, starts, rows):
    """Live docs of the clusters ``probes`` whose partial score is >= ``tau``, in doc order,
    written to ``rows``; returns how many. One read of the accumulator that tests the score alone
    (few docs pass: a predictable branch), then the few that passed are checked for being live. Testing
    ``acc[d] != 0`` in the same loop made it six times slower (numba, 1M docs), as did a first
    pass writing every score (-inf for the untouched third of the docs at 1M), which cost more
    than the rest of the selection."""
    m = 0
    for c in probes:
        m = _above(acc, off, scale, tau, starts[c], starts[c + 1], rows, m)
    kept = 0
    for i in range(m):
        d = rows[i]
        if _live(acc, skip, d):
            rows[kept] = d
            kept += 1
    return kept


@njit(cache=True)
def _threshold(acc, off, scale, skip, budget, probes, starts):
    """A partial score that about 1.25 x ``budget`` live docs of the clusters ``probes`` reach,
    read off a sample of one doc in :data:`SAMPLE_FRACTION` from each cluster: ``SAMPLE_CHUNKS /
    probes`` runs (at least :data:`RUNS_PER_CLUSTER`) spread evenly over it; :data:`LOWEST` when
    the sample holds too few live docs. Docs near each other in one cluster score alike, so every probed
    cluster is sampled, in proportion to its size."""
    total = 0
    for c in probes:
        total += starts[c + 1] - starts[c]
    if budget >= total:
        return LOWEST
    chunks = max(RUNS_PER_CLUSTER, SAMPLE_CHUNKS // probes.shape[0])
    ns = 0
    for c in probes:
        ns += chunks * (((starts[c + 1] - starts[c]) // (SAMPLE_FRACTION * chunks)) or 1)
    want = min(ns, (5 * budget * ns) // (4 * total) + 1)
    hv = np.empty(want, dtype=np.float32)
    hi = np.empty(want, dtype=np.int64)
    size = 0
    for c in probes:
        length = starts[c + 1] - starts[c]
        run = (length // (SAMPLE_FRACTION * chunks)) or 1
        for j in range(chunks):
            first = starts[c] + j * length // chunks
            for d in range(np.uint64(first), np.uint64(min(starts[c + 1], first + run))):
                s = _partial(acc, off, scale, d)
                if (size < want or s > hv[0]) and _live(acc, skip, d):  # most docs fail the first test
                    size = _heap_push(hv, hi, size, s, d)
    return max(LOWEST, hv[0]) if size == want else LOWEST


@njit(cache=True)
def _shortlist(acc, off, scale, skip, budget, probes, starts, rows):
    """The ``budget`` best docs of the clusters ``probes`` (ascending; cluster c holds docs
    ``starts[c]:starts[c + 1]``) by partial score ``(acc[d] + off) * scale[d]`` among those the
    terms touched (``acc[d] != 0``) and not skipped, written to ``rows`` (capacity n) in doc
    order; returns how many (fewer when fewer were touched); leaves those clusters' ``acc`` cleared.

    Linear in the probed docs, no heap over the touched docs: a threshold that about 1.25 x
    ``budget`` docs pass is read off a sample (:func:`_threshold`), one pass collects the docs
    above it, and only those few are cut to ``budget`` exactly (ties: lower doc first). A
    threshold set too high (a sampling miss, rare) is redone exactly."""
    tau = _threshold(acc, off, scale, skip, budget, probes, starts)
    m = _collect(acc, off, scale, skip, tau, probes, starts, rows)
    if m < budget and tau > LOWEST:  # the sample missed: the exact budget-th score of the live docs
        m = _collect(acc, off, scale, skip, LOWEST, probes, starts, rows)
        if m > budget:
            scores = np.empty(m, dtype=np.float32)
            for i in range(m):
                scores[i] = _partial(acc, off, scale, rows[i])
            m = _collect(acc, off, scale, skip, np.partition(scores, m - budget)[m - budget], probes, starts, rows)
    if m > budget:  # cut to the budget in one pass, in doc order: every doc above the cut, the first ties at it
        scores = np.empty(m, dtype=np.float32)
        for i in range(m):
            scores[i] = _partial(acc, off, scale, rows[i])
        cut = np.partition(scores, m - budget)[m - budget]
        ties = budget
        for i in range(m):
            if scores[i] > cut:
                ties -= 1
        kept = 0
        for i in range(m):
            if scores[i] > cut or (scores[i] == cut and ties > 0):
                if scores[i] == cut:
                    ties -= 1
                rows[kept] = rows[i]
                kept += 1
        m = kept
    for c in probes:
        acc[starts[c] : starts[c + 1]] = 0.0
    return m


@njit(cache=True)
def _score_rows(rows, m, qrow, off, fwd_idx, fwd_val, lut, scale, hv, hi):
    """The exact scores ``(qrow . code_d + off) * scale[d]`` of the shortlist ``rows[:m]`` from the
    forward index, the best kept in the bounded heap (hv, hi); returns its size. The rows are
    random: each one's cache lines are fetched a few rows ahead while the current one is scored."""
    has_scale = scale.shape[0] > 0
    size = 0
    for r in range(m):
        if r + PREFETCH_AHEAD < m:
            ahead = rows[r + PREFETCH_AHEAD]
            prefetch(fwd_idx[ahead], 0)
            prefetch(fwd_val[ahead], 0)
        d = rows[r]
        s = _forward_score(qrow, fwd_idx, fwd_val, lut, d) + off
        if has_scale:
            s *= scale[d]
        size = _offer(hv, hi, size, s, d)
    return size


@njit(cache=True)
def _pruned_chunk(c, q0, q1, qptr, qlat, qval, dense, cut, candidates,
                  indptr, docs, vals, fwd_idx, fwd_val, lut, n, h, offset, scale, skip, probes, starts, runs, work,
                  out_d, out_i):
    acc, rows, qdense = work.acc[c], work.touched[c], work.qdense[c]
    topn = out_d.shape[1]
    hv = np.empty(topn, dtype=np.float32)
    hi = np.empty(topn, dtype=np.int64)
    for q in range(q0, q1):
        off = _query_offset(offset, q)
        # 1. shortlist: partial scores of the query's first terms over the (pruned) posting lists
        mine = probes[q] if probes.shape[0] > 1 else probes[0]
        _add_lists(q, qptr, qlat, qval, cut, indptr, docs, vals, lut, mine, runs, acc)
        csize = _shortlist(acc, off, scale, skip, candidates, mine, starts, rows)
        # 2. exact scores of the shortlist with the whole query, from the forward index
        if dense.shape[0] > 0:
            qrow = dense[q]
        else:
            for p in range(qptr[q], qptr[q + 1]):
                qdense[qlat[p]] = qval[p]
            qrow = qdense
        size = _score_rows(rows, csize, qrow, off, fwd_idx, fwd_val, lut, scale, hv, hi)
        if dense.shape[0] == 0:
            for p in range(qptr[q], qptr[q + 1]):
                qdense[qlat[p]] = 0.0
        _emit(hv, hi, size, out_d[q], out_i[q])


@njit(cache=True, parallel=True)
def _pruned_parallel(nchunks, qptr, qlat, qval, dense, cut, candidates,
                     indptr, docs, vals, fwd_idx, fwd_val, lut, n, h, offset, scale, skip, probes, starts, runs, work,
                     out_d, out_i):
    nq = qptr.shape[0] - 1
    for c in prange(nchunks):
        _pruned_chunk(c, c * nq // nchunks, (c + 1) * nq // nchunks, qptr, qlat, qval, dense, cut, candidates,
                      indptr, docs, vals, fwd_idx, fwd_val, lut, n, h, offset, scale, skip, probes, starts, runs, work,
                      out_d, out_i)


def pruned_topn(threads: int, qptr, qlat, qval, dense, cut: int, candidates: int,
                indptr, docs, vals, fwd_idx, fwd_val, lut, n: int, h: int, offset, scale, skip, work, out_d, out_i,
                probes, starts, runs) -> None:
    """Shortlist ``candidates`` docs by the partial score of each query's first ``cut`` terms
    over their posting lists (doc-ordered, pruned as the engine built them), among the docs of
    the clusters ``probes`` (nq, P) or (1, P) for every query, ascending (cluster c: docs
    ``starts[c]:starts[c + 1]``, its runs of the lists :func:`list_runs`), then return the top-n
    of the shortlist by exact score: the whole sparse query (``qptr``/``qlat``/``qval``), or the
    dense query ``dense`` (nq, h) when it is not empty, against the forward index. ``work``
    holds one cleared accumulator and an n-row buffer per thread (see :class:`Workspace`)."""
    nq = len(qptr) - 1
    args = (qptr, qlat, qval, dense, cut, candidates, indptr, docs, vals, fwd_idx, fwd_val, lut, n, h,
            offset, scale, skip, probes, starts, runs, work, out_d, out_i)
    if min(threads, nq) <= 1:
        _pruned_chunk(0, 0, nq, *args)
    else:
        use_threadsafe_layer()
        _pruned_parallel(min(threads, nq, work.acc.shape[0]), *args)
