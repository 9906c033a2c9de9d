"""Compiled (numba) kernels shared by the CPU engines.

Every kernel works on plain arrays: posting lists in CSR form (``indptr`` over
latents, ``docs`` int32, ``vals`` float32 or float16 bits as uint16 read through
``LUT``), a forward index (``fwd_idx`` (n, k) uint16/uint32 latent ids, ``fwd_val``
(n, k)), and queries in CSR form (``qptr``, ``qlat``, ``qval``) or dense (nq, h).
An empty ``offset`` / ``scale`` / ``skip`` array means "none" (``skip``: uint8 per
doc, non-zero = deleted, never returned). Results go to ``out_d`` /
``out_i`` (nq, topn), sorted descending, padded with (-inf, -1).

Batches are split into one contiguous chunk of queries per thread; each chunk
allocates its scratch (accumulator, marks, heaps) once. A single query runs the
serial kernel, with no thread-pool hand-off.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..threads import use_threadsafe_layer

__all__ = [
    "LUT",
    "Workspace",
    "half_lut",
    "postings_topn",
    "forward_topn",
    "prefetch",
    "query_csr",
    "value_of",
]


def half_lut() -> np.ndarray:
    """float32 value of every float16 bit pattern (numba cannot read float16 arrays)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


LUT = half_lut()


class Workspace(NamedTuple):
    """Per-thread scratch of the term-at-a-time kernels, one row per chunk of queries: the score
    accumulator and touched-doc marks (length n), a row buffer and a score buffer (n + 1: the
    exact engine's touched docs, the pruned engine's shortlist and its partial scores), and a
    dense query (length h). Kernels leave it cleared, so an engine allocates it once per calling
    thread and reuses it: for a single query on 100k docs, allocating and zeroing it cost more
    than reading 2,000 postings."""

    acc: np.ndarray
    mark: np.ndarray
    touched: np.ndarray
    scores: np.ndarray
    qdense: np.ndarray

    @classmethod
    def empty(cls, chunks: int, n: int, h: int) -> "Workspace":
        # one spare slot: the branch-free loops write before they count
        return cls(np.zeros((chunks, n), np.float32), np.zeros((chunks, n), np.uint8),
                   np.empty((chunks, n + 1), np.int32), np.empty((chunks, n + 1), np.float32),
                   np.zeros((chunks, h), np.float32))


def value_of(vals, lut, e):
    """Entry ``e`` of ``vals`` as float32: float16 bits (uint16) through ``lut``, other numbers cast."""
    raise NotImplementedError("compiled only")


@overload(value_of, inline="always")
def _value_impl(vals, lut, e):
    if vals.dtype == types.uint16:  # float16 bits
        return lambda vals, lut, e: lut[vals[e]]
    return lambda vals, lut, e: np.float32(vals[e])


@intrinsic
def prefetch(typingctx, array, i):
    """Hint the CPU to bring the cache line holding ``array[i]`` (1-D, C-contiguous) into
    cache, without waiting for it: the row a loop will read a few iterations later is on its
    way while the current one is scored (LLVM's ``llvm.prefetch``; a no-op where unsupported).
    Scoring 1,000 random forward-index rows of pypi-100k took 0.19 ms per query without it,
    0.06-0.08 ms prefetching 4 rows ahead."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arrayty = signature.args[0]
        ary = context.make_array(arrayty)(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, arrayty, ary, [index], wraparound=False)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        name = "llvm.prefetch.p0" if str(byte_ptr) == "ptr" else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
                                            name)
        # read access, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, i), codegen


PREFETCH_AHEAD = 4
"""Candidates ahead whose rows a scoring loop prefetches (4 measured best of 4 / 8 / 16)."""


@njit(cache=True)
def query_csr(indices, values):
    """Queries (nq, k) as CSR arrays (indptr int64, latents int32, values float32), each row's
    non-zero entries ordered by decreasing |value| (stable): one compiled pass, not the handful
    of numpy calls (each a few microseconds) that would cost more than a single query's search."""
    nq, k = values.shape
    indptr = np.zeros(nq + 1, dtype=np.int64)
    lat = np.empty(nq * k, dtype=np.int32)
    val = np.empty(nq * k, dtype=np.float32)
    m = 0
    for q in range(nq):
        for j in np.argsort(-np.abs(values[q]), kind="mergesort"):
            v = values[q, j]
            if v != 0:
                lat[m] = indices[q, j]
                val[m] = v
                m += 1
        indptr[q + 1] = m
    return indptr, lat[:m].copy(), val[:m].copy()


@njit(cache=True, inline="always")
def _heap_push(hv, hi, size, v, i):
    """Push (v, i) on a min-heap of capacity len(hv) holding ``size`` items; returns the new size."""
    cap = hv.shape[0]
    if size < cap:
        pos = size
        size += 1
    elif v > hv[0]:
        pos = 0
        # sift the hole at the root down, as if the root were removed
        while True:
            child = 2 * pos + 1
            if child >= cap:
                break
            if child + 1 < cap and hv[child + 1] < hv[child]:
                child += 1
            if hv[child] >= v:
                break
            hv[pos] = hv[child]
            hi[pos] = hi[child]
            pos = child
        hv[pos] = v
        hi[pos] = i
        return size
    else:
        return size
    while pos > 0:  # sift up a new leaf
        parent = (pos - 1) >> 1
        if hv[parent] <= v:
            break
        hv[pos] = hv[parent]
        hi[pos] = hi[parent]
        pos = parent
    hv[pos] = v
    hi[pos] = i
    return size


@njit(cache=True)
def _emit(hv, hi, size, out_d, out_i):
    """Write the heap's items sorted by descending value, then (-inf, -1) padding."""
    order = np.argsort(-hv[:size], kind="mergesort")
    for r in range(size):
        out_d[r] = hv[order[r]]
        out_i[r] = hi[order[r]]
    for r in range(size, out_d.shape[0]):
        out_d[r] = -np.inf
        out_i[r] = -1


@njit(cache=True, inline="always")
def _query_offset(offset, q):
    return offset[q] if offset.shape[0] > 0 else np.float32(0.0)


@njit(cache=True, inline="always")
def _offer(hv, hi, size, v, i):
    """Push (v, i) only when it can enter the heap: most docs fail this one comparison.
    Callers hoist the offset / scale branches out of their per-doc loops: a per-doc
    helper taking the optional arrays measured 5x slower on pypi-100k."""
    if size < hv.shape[0] or v > hv[0]:
        return _heap_push(hv, hi, size, v, i)
    return size


@njit(cache=True)
def _accumulate(q, qptr, qlat, qval, indptr, docs, vals, lut, acc, mark, touched):
    """Term at a time: add every query term's products over its whole posting list; returns
    the number of docs touched (listed in ``touched``, each once)."""
    nt = 0
    for p in range(qptr[q], qptr[q + 1]):
        lat = qlat[p]
        w = qval[p]
        # branch-free: a doc seen before is written again, not counted; unsigned positions and docs,
        # so numba drops its negative-index checks (as in the pruned engine's lists)
        for e in range(np.uint64(indptr[lat]), np.uint64(indptr[lat + 1])):
            d = np.uint32(docs[e])
            touched[nt] = d
            nt += 1 - mark[d]
            mark[d] = 1
            acc[d] += w * value_of(vals, lut, e)
    return nt


@njit(cache=True, inline="always")
def _drain(nt, touched, acc, mark, off, scale, skip, hv, hi):
    """Offer every touched doc's accumulated score (+ offset, * scale) to the bounded heap
    (hv, hi), leaving out skipped docs, and clear the accumulator for the next query;
    returns the heap size."""
    size = 0
    has_scale = scale.shape[0] > 0
    has_skip = skip.shape[0] > 0
    for t in range(nt):
        d = touched[t]
        s = acc[d] + off
        acc[d] = 0.0
        mark[d] = 0
        if has_skip and skip[d] != 0:
            continue
        if has_scale:
            s *= scale[d]
        size = _offer(hv, hi, size, s, d)
    return size


@njit(cache=True)
def _postings_chunk(c, q0, q1, qptr, qlat, qval, indptr, docs, vals, lut, n, offset, scale, skip, work, out_d, out_i):
    acc, mark, touched = work.acc[c], work.mark[c], work.touched[c]
    topn = out_d.shape[1]
    hv = np.empty(topn, dtype=np.float32)
    hi = np.empty(topn, dtype=np.int64)
    for q in range(q0, q1):
        off = _query_offset(offset, q)
        nt = _accumulate(q, qptr, qlat, qval, indptr, docs, vals, lut, acc, mark, touched)
        size = _drain(nt, touched, acc, mark, off, scale, skip, hv, hi)
        _emit(hv, hi, size, out_d[q], out_i[q])


@njit(cache=True, parallel=True)
def _postings_parallel(nchunks, qptr, qlat, qval, indptr, docs, vals, lut, n, offset, scale, skip, work, out_d, out_i):
    nq = qptr.shape[0] - 1
    for c in prange(nchunks):
        q0 = c * nq // nchunks
        q1 = (c + 1) * nq // nchunks
        _postings_chunk(c, q0, q1, qptr, qlat, qval, indptr, docs, vals, lut, n, offset, scale, skip, work, out_d, out_i)


def postings_topn(threads: int, qptr, qlat, qval, indptr, docs, vals, lut, n: int, offset, scale, skip, work,
                  out_d, out_i) -> None:
    """Exact top-n by term-at-a-time scoring of every query term over whole posting lists;
    ``work`` holds one cleared accumulator per thread (see :class:`Workspace`)."""
    nq = len(qptr) - 1
    args = (qptr, qlat, qval, indptr, docs, vals, lut, n, offset, scale, skip, work, out_d, out_i)
    if min(threads, nq) <= 1:
        _postings_chunk(0, 0, nq, *args)
    else:
        use_threadsafe_layer()
        _postings_parallel(min(threads, nq, work.acc.shape[0]), *args)


@njit(cache=True, inline="always")
def _forward_score(qdense, fwd_idx, fwd_val, lut, d):
    s = np.float32(0.0)
    for j in range(fwd_idx.shape[1]):
        s += qdense[fwd_idx[d, j]] * value_of(fwd_val[d], lut, j)
    return s


QUERY_BLOCK = 16
"""Dense queries scored together in one pass over the forward index: each doc's code is
read once per block, not once per query (the scan is memory-bound)."""


@njit(cache=True)
def _forward_chunk(q0, q1, queries, fwd_idx, fwd_val, lut, offset, scale, skip, out_d, out_i):
    topn = out_d.shape[1]
    k = fwd_idx.shape[1]
    hv = np.empty((QUERY_BLOCK, topn), dtype=np.float32)
    hi = np.empty((QUERY_BLOCK, topn), dtype=np.int64)
    sizes = np.zeros(QUERY_BLOCK, dtype=np.int64)
    offs = np.zeros(QUERY_BLOCK, dtype=np.float32)
    lat = np.empty(k, dtype=np.int64)
    val = np.empty(k, dtype=np.float32)
    has_scale = scale.shape[0] > 0
    has_skip = skip.shape[0] > 0
    for b0 in range(q0, q1, QUERY_BLOCK):
        nb = min(QUERY_BLOCK, q1 - b0)
        for j in range(nb):
            sizes[j] = 0
            offs[j] = _query_offset(offset, b0 + j)
        for d in range(fwd_idx.shape[0]):
            if has_skip and skip[d] != 0:
                continue
            row = fwd_val[d]
            for t in range(k):
                lat[t] = fwd_idx[d, t]
                val[t] = value_of(row, lut, t)
            for j in range(nb):
                qrow = queries[b0 + j]
                s = np.float32(0.0)
                for t in range(k):
                    s += qrow[lat[t]] * val[t]
                s += offs[j]
                if has_scale:
                    s *= scale[d]
                sizes[j] = _offer(hv[j], hi[j], sizes[j], s, d)
        for j in range(nb):
            _emit(hv[j], hi[j], sizes[j], out_d[b0 + j], out_i[b0 + j])


@njit(cache=True, parallel=True)
def _forward_parallel(nchunks, queries, fwd_idx, fwd_val, lut, offset, scale, skip, out_d, out_i):
    nq = queries.shape[0]
    for c in prange(nchunks):
        _forward_chunk(c * nq // nchunks, (c + 1) * nq // nchunks, queries, fwd_idx, fwd_val, lut, offset, scale,
                       skip, out_d, out_i)


def forward_topn(threads: int, queries, fwd_idx, fwd_val, lut, offset, scale, skip, out_d, out_i) -> None:
    """Top-n of dense queries (nq, h) by scanning the forward index (every doc scored)."""
    nq = queries.shape[0]
    args = (queries, fwd_idx, fwd_val, lut, offset, scale, skip, out_d, out_i)
    if min(threads, nq) <= 1:
        _forward_chunk(0, nq, *args)
    else:
        use_threadsafe_layer()
        _forward_parallel(min(threads, nq), *args)
