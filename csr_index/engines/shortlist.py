"""Compiled (numba) kernels of the pruned engine: a sparse shortlist, then exact scores.

Per query: the first ``cut`` query terms' posting lists (doc-ordered, statically pruned when
the engine was built, compact: :class:`~csr_index.engines.postings.ClusterLists`) are added
into a dense per-thread accumulator, only the runs of the clusters the query probes (a
clustered segment's nearest ones, see :mod:`csr_index.clusters`; otherwise every block of
65,536 rows); the ``candidates`` best docs of those clusters by that partial score are
selected in linear time (:func:`_select`); those are scored exactly against the forward index,
prefetching the rows a few candidates ahead; a bounded heap keeps the top-n. Array conventions
are those of :mod:`csr_index.engines.kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..threads import use_threadsafe_layer
from .kernels import PREFETCH_AHEAD, _emit, _forward_score, _heap_push, _offer, _query_offset, prefetch

__all__ = ["pruned_topn"]


@njit(cache=True)
def _add_lists(q, qptr, qlat, qval, cut, indptr, docs, vals, lscale, probes, runs, starts, acc):
    """Add the first ``cut`` query terms' products over their posting lists (a
    :class:`~csr_index.engines.postings.ClusterLists`: docs as offsets in their cluster, values as
    levels of the list's scale ``lscale``) into ``acc``, only the runs of the clusters ``probes``
    (its ``runs``), each into its cluster's window of ``acc``: read front to back, no touched-doc
    list."""
    for p in range(qptr[q], min(qptr[q + 1], qptr[q] + cut)):
        lat = qlat[p]
        w = qval[p] * lscale[lat]
        base = indptr[lat]
        for c in probes:
            window = acc[starts[c] : starts[c + 1]]
            for e in range(np.uint64(base + runs[lat, c]), np.uint64(base + runs[lat, c + 1])):
                window[np.uint32(docs[e])] += w * np.float32(vals[e])  # unsigned: no negative-index checks


LOWEST = np.float32(-3.4028235e38)
"""The smallest finite float32: a threshold every touched doc passes."""
SAMPLE_FRACTION = 16
"""At least one doc in SAMPLE_FRACTION is sampled to estimate :func:`_select`'s threshold."""
SAMPLE_TOP = 64
"""A larger budget samples fewer docs, so that about this many of them pass the threshold: on the
1M set (3,185 candidates) one doc in 64 instead of 16 cut the threshold and the collection together
from 1.04 to 0.72 ms per query (one A/B), and 1 query in 300 still fell back to the exact pass."""
PASS = 1.5
"""The threshold is set where about PASS x budget live docs pass it (1.25 missed 36 queries in 300
with the sparser sample)."""
RUNS_PER_CLUSTER = 8
"""At least this many sample runs in each probed cluster: its rows keep their insertion order, and
neighbours in that order can score alike (on the 1M set, one run at each cluster's start sampled
mostly the first 100k rows, and 15 % of the queries fell back to the exact threshold)."""
SAMPLE_CHUNKS = 64
"""The sample is this many runs of neighbouring docs, spread evenly over the rows: read as
streams. One doc every 16 read every cache line of the accumulator; runs of 16 docs every 256
missed the cache on every run (0.35 and 0.85 ms of the selection at 1M)."""


@njit(cache=True, inline="always")
def _partial(a, off, scale, d):
    """Doc ``d``'s partial score from its accumulated ``a``: ``(a + off) * scale[d]`` (no scale
    when ``scale`` is empty)."""
    if scale.shape[0] > 0:
        return (a + off) * scale[d]
    return a + off


@njit(cache=True, inline="always")
def _live(acc, skip, d):
    """Whether doc ``d`` is a candidate: touched by the terms (``acc[d] != 0``) and not skipped."""
    return acc[d] != 0.0 and (skip.shape[0] == 0 or skip[d] == 0)


@njit(cache=True)
def _collect(acc, off, scale, skip, tau, lo, hi, rows, scores, m):
    """Live docs ``lo:hi`` whose partial score is >= ``tau`` and their scores appended to ``rows``
    and ``scores`` from ``m``, each doc's ``acc`` cleared as it is read; returns the new count.
    Few docs pass: the test on the score is a predictable branch, and inside it a doc is written
    first and counted only if live (touched, not skipped). Testing ``acc[d] != 0`` in the branch
    made the loop three times slower (1M docs): the compiler joins both tests, and a third of the
    docs are untouched at random. The doc numbers are unsigned: numba then drops its negative-index
    check from each read, which made the loop 1.5 times slower (100k docs)."""
    has_skip = skip.shape[0] > 0
    for d in range(np.uint64(lo), np.uint64(hi)):
        a = acc[d]
        acc[d] = 0.0
        s = _partial(a, off, scale, d)
        if s >= tau:
            rows[m] = d
            scores[m] = s
            live = a != 0.0
            if has_skip:
                live &= skip[d] == 0
            m += live
    return m


@njit(cache=True)
def _threshold(acc, off, scale, skip, budget, probes, starts):
    """A partial score that about :data:`PASS` x ``budget`` live docs of the clusters ``probes``
    reach, read off a sample of one doc in max(:data:`SAMPLE_FRACTION`, PASS x budget /
    :data:`SAMPLE_TOP`) from each cluster: ``SAMPLE_CHUNKS / probes`` runs (at least
    :data:`RUNS_PER_CLUSTER`) spread evenly over it; :data:`LOWEST` when the sample holds too few
    live docs. Docs near each other in one cluster score alike, so every probed cluster is sampled,
    in proportion to its size."""
    total = 0
    for c in probes:
        total += starts[c + 1] - starts[c]
    if budget >= total:
        return LOWEST
    fraction = max(SAMPLE_FRACTION, int(PASS * budget) // SAMPLE_TOP)
    chunks = max(RUNS_PER_CLUSTER, SAMPLE_CHUNKS // probes.shape[0])
    ns = 0
    for c in probes:
        ns += chunks * (((starts[c + 1] - starts[c]) // (fraction * chunks)) or 1)
    want = min(ns, int(PASS * budget * ns / total) + 1)
    hv = np.empty(want, dtype=np.float32)
    hi = np.empty(want, dtype=np.int64)
    size = 0
    for c in probes:
        length = starts[c + 1] - starts[c]
        run = (length // (fraction * chunks)) or 1
        for j in range(chunks):
            first = starts[c] + j * length // chunks
            for d in range(np.uint64(first), np.uint64(min(starts[c + 1], first + run))):
                s = _partial(acc[d], off, scale, d)
                if (size < want or s > hv[0]) and _live(acc, skip, d):  # most docs fail the first test
                    size = _heap_push(hv, hi, size, s, d)
    return max(LOWEST, hv[0]) if size == want else LOWEST


@njit(cache=True)
def _select(acc, off, scale, skip, budget, probes, starts, rows, scores, exact):
    """The ``budget`` best docs of the clusters ``probes`` (ascending; cluster c holds docs
    ``starts[c]:starts[c + 1]``) by partial score ``(acc[d] + off) * scale[d]`` among those the
    terms touched (``acc[d] != 0``) and not skipped, written to ``rows`` (capacity n + 1) in doc
    order; returns how many (fewer when fewer were touched), or -1 when the sampled threshold
    passed fewer than ``budget`` docs (rare: the caller adds the lists again and calls with
    ``exact``). Leaves those clusters' ``acc`` cleared either way.

    Linear in the probed docs, no heap over the touched docs: a threshold that about
    :data:`PASS` x ``budget`` docs pass is read off a sample (:func:`_threshold`; with ``exact``
    every live doc passes), one pass collects the docs above it with their scores and clears the
    accumulator, and only those few are cut to ``budget`` exactly (ties: lower doc first)."""
    tau = LOWEST if exact else _threshold(acc, off, scale, skip, budget, probes, starts)
    m = 0
    for c in probes:
        m = _collect(acc, off, scale, skip, tau, starts[c], starts[c + 1], rows, scores, m)
    if m < budget and tau > LOWEST:
        return -1
    if m > budget:  # cut to the budget in one pass, in doc order: every doc above the cut, the first ties at it
        cut = np.partition(scores[:m], m - budget)[m - budget]
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
    return m


@njit(cache=True)
def _shortlist(q, qptr, qlat, qval, cut, indptr, docs, vals, lscale, probes, runs, acc, off, scale, skip, budget,
               starts, rows, scores):
    """:func:`_select` over the lists :func:`_add_lists` has added for query ``q``; when the
    sampled threshold misses, the lists are added again and every live doc passes. Returns the
    shortlist's size (rows in ``rows``); leaves ``acc`` cleared."""
    m = _select(acc, off, scale, skip, budget, probes, starts, rows, scores, False)
    if m < 0:
        _add_lists(q, qptr, qlat, qval, cut, indptr, docs, vals, lscale, probes, runs, starts, acc)
        m = _select(acc, off, scale, skip, budget, probes, starts, rows, scores, True)
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
                  indptr, docs, vals, lscale, fwd_idx, fwd_val, lut, n, h, offset, scale, skip, probes, starts, runs,
                  work, out_d, out_i):
    acc, rows, scores, qdense = work.acc[c], work.touched[c], work.scores[c], work.qdense[c]
    topn = out_d.shape[1]
    hv = np.empty(topn, dtype=np.float32)
    hi = np.empty(topn, dtype=np.int64)
    for q in range(q0, q1):
        off = _query_offset(offset, q)
        # 1. shortlist: partial scores of the query's first terms over the (pruned) posting lists
        mine = probes[q] if probes.shape[0] > 1 else probes[0]
        _add_lists(q, qptr, qlat, qval, cut, indptr, docs, vals, lscale, mine, runs, starts, acc)
        csize = _shortlist(q, qptr, qlat, qval, cut, indptr, docs, vals, lscale, mine, runs, acc, off, scale, skip,
                           candidates, starts, rows, scores)
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
                     indptr, docs, vals, lscale, fwd_idx, fwd_val, lut, n, h, offset, scale, skip, probes, starts,
                     runs, work, out_d, out_i):
    nq = qptr.shape[0] - 1
    for c in prange(nchunks):
        _pruned_chunk(c, c * nq // nchunks, (c + 1) * nq // nchunks, qptr, qlat, qval, dense, cut, candidates,
                      indptr, docs, vals, lscale, fwd_idx, fwd_val, lut, n, h, offset, scale, skip, probes, starts,
                      runs, work, out_d, out_i)


def pruned_topn(threads: int, qptr, qlat, qval, dense, cut: int, candidates: int,
                indptr, docs, vals, lscale, fwd_idx, fwd_val, lut, n: int, h: int, offset, scale, skip, work, out_d,
                out_i, probes, starts, runs) -> None:
    """Shortlist ``candidates`` docs by the partial score of each query's first ``cut`` terms
    over their posting lists (a ``ClusterLists``: ``indptr``, ``docs``, ``vals``, ``lscale``,
    ``runs``; doc-ordered, pruned as the engine built them), among the docs of the clusters
    ``probes`` (nq, P) or (1, P) for every query, ascending (cluster c: docs
    ``starts[c]:starts[c + 1]``), then return the top-n of the shortlist by exact score: the
    whole sparse query (``qptr``/``qlat``/``qval``), or the dense query ``dense`` (nq, h) when it
    is not empty, against the forward index. ``work`` holds one cleared accumulator and n-row
    buffers of rows and scores per thread (see :class:`Workspace`)."""
    nq = len(qptr) - 1
    args = (qptr, qlat, qval, dense, cut, candidates, indptr, docs, vals, lscale, fwd_idx, fwd_val, lut, n, h,
            offset, scale, skip, probes, starts, runs, work, out_d, out_i)
    if min(threads, nq) <= 1:
        _pruned_chunk(0, 0, nq, *args)
    else:
        use_threadsafe_layer()
        _pruned_parallel(min(threads, nq, work.acc.shape[0]), *args)
