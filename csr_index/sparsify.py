"""Compiled (numba) CPU encoding: from pre-activations to stored codes, one row at a time.

For each row of pre-activations ``pre`` (n, h) — computed by one BLAS product — the kernel
picks the k largest latents (of ``pre + select``: a selection-only shift, zeros when the
adapter has none), takes their ReLU'd pre-activations as values or, with ``refit``, solves
the least-squares values on that support from the (k, k) block of the gram matrix W W^T
(Cholesky, in float64; negative solutions clipped to 0), sorts the slots by descending value
and computes the norm of the code's reconstruction from the same block. It is what
:meth:`SparseAdapter.topk`, :meth:`SparseAdapter.refit` and :meth:`SparseAdapter.code_norms`
compute with torch (the reference, used on GPUs), without their (n, k, k) intermediates and
per-call overheads; rows run in parallel over numba's threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .engines.kernels import _offer
from .threads import num_threads

__all__ = ["encode_rows", "support_rows", "GRAM_MAX_H"]

GRAM_MAX_H = 8192
"""Widest code space whose (h, h) gram matrix W W^T is kept for encoding (256 MiB at h = 8192); wider
adapters encode in torch, from the atoms of each support."""


RIDGE = 1e-4
"""Ridge added to the support's gram block when refitting the values (as :meth:`SparseAdapter.refit`)."""

TOPK_BLOCK = 16
"""Entries per block whose maximum :func:`_top_k` takes to bound the k-th largest entry."""


@njit(cache=True)
def top_k_scratch(h):
    """The scratch :func:`_top_k` needs for rows of length ``h``: the scores and the block maxima."""
    return np.empty(h, dtype=np.float32), np.empty((h + TOPK_BLOCK - 1) // TOPK_BLOCK, dtype=np.float32)


@njit(cache=True, inline="always")
def _top_k(row, select, idx, key, scores, block_max):
    """Indices of the len(key) largest ``row + select`` into ``idx``, unordered (ties: the
    earlier entry), through the engines' bounded min-heap on ``key``. Only entries at or above
    the k-th largest block maximum are offered: every one of the k blocks with the largest
    maxima holds an entry that high, so nothing below it can be in the top k. That bound costs
    one vectorised pass; the heap then sees a few dozen entries instead of all h (for h = 1536,
    k = 32: the encode kernel without refit 14 -> 8 us per row)."""
    h = row.shape[0]
    k = idx.shape[0]
    if select.shape[0] > 0:
        for j in range(h):
            scores[j] = row[j] + select[j]
    else:
        for j in range(h):
            scores[j] = row[j]
    nb = block_max.shape[0]
    tau = np.float32(-np.inf)
    if nb > k:
        for b in range(nb):
            m = np.float32(-np.inf)
            for j in range(b * TOPK_BLOCK, min(h, (b + 1) * TOPK_BLOCK)):
                m = max(m, scores[j])
            block_max[b] = m
        size = 0
        for b in range(nb):
            size = _offer(key, idx, size, block_max[b], b)
        tau = key[0]
    size = 0
    for j in range(h):
        if scores[j] >= tau:
            size = _offer(key, idx, size, scores[j], j)


@njit(cache=True, inline="always")
def _cholesky_solve(a, b, k):
    """Solve a x = b in place (b becomes x) for symmetric positive definite ``a`` (k, k), whose
    lower triangle is overwritten; False when ``a`` is not positive definite."""
    for j in range(k):
        s = a[j, j]
        for t in range(j):
            s -= a[j, t] * a[j, t]
        if s <= 0.0:
            return False
        d = np.sqrt(s)
        a[j, j] = d
        for i in range(j + 1, k):
            s = a[i, j]
            for t in range(j):
                s -= a[i, t] * a[j, t]
            a[i, j] = s / d
    for i in range(k):  # L y = b
        s = b[i]
        for t in range(i):
            s -= a[i, t] * b[t]
        b[i] = s / a[i, i]
    for i in range(k - 1, -1, -1):  # L^T x = y
        s = b[i]
        for t in range(i + 1, k):
            s -= a[t, i] * b[t]
        b[i] = s / a[i, i]
    return True


@njit(cache=True)
def _encode_chunk(r0, r1, pre, select, k, refit, ridge, gram, latent_bias, w_bias, bias_sq, out_idx, out_val, out_norm):
    idx = np.empty(k, dtype=np.int64)
    key = np.empty(k, dtype=np.float32)
    scores, block_max = top_k_scratch(pre.shape[1])
    g = np.empty((k, k), dtype=np.float64)
    chol = np.empty((k, k), dtype=np.float64)
    val = np.empty(k, dtype=np.float64)
    for r in range(r0, r1):
        row = pre[r]
        _top_k(row, select, idx, key, scores, block_max)
        for a in range(k):
            ia = idx[a]
            for b in range(a + 1):
                g[a, b] = gram[ia, idx[b]]
                g[b, a] = g[a, b]
        if refit:
            for a in range(k):
                val[a] = row[idx[a]] - latent_bias[idx[a]]
                for b in range(a + 1):
                    chol[a, b] = g[a, b]
                chol[a, a] += ridge
            if not _cholesky_solve(chol, val, k):  # numerically singular support: LU on the full block
                rhs = np.empty(k, dtype=np.float64)
                for a in range(k):
                    rhs[a] = row[idx[a]] - latent_bias[idx[a]]
                    g[a, a] += ridge
                val[:] = np.linalg.solve(g, rhs)
                for a in range(k):
                    g[a, a] -= ridge
        else:
            for a in range(k):
                val[a] = row[idx[a]]
        for a in range(k):
            if val[a] < 0.0:
                val[a] = 0.0
        quad = bias_sq
        for a in range(k):
            if val[a] != 0.0:
                cross = 0.0
                for b in range(k):
                    cross += g[a, b] * val[b]
                quad += val[a] * (cross + 2.0 * w_bias[idx[a]])
        out_norm[r] = np.sqrt(max(quad, 0.0))
        for a in range(1, k):  # insertion sort by descending value (k is small; no allocation)
            v, i = val[a], idx[a]
            b = a - 1
            while b >= 0 and val[b] < v:
                val[b + 1], idx[b + 1] = val[b], idx[b]
                b -= 1
            val[b + 1], idx[b + 1] = v, i
        for a in range(k):
            out_idx[r, a] = idx[a]
            out_val[r, a] = val[a]


ROWS_PER_CHUNK = 256
"""Fewest rows a thread of the compiled row kernels takes: smaller batches run on one thread."""


def _row_chunks(n: int) -> int:
    """Threads (chunks of rows) a batch of ``n`` rows is split over: numba's count, at most one per ROWS_PER_CHUNK."""
    return min(num_threads(), max(1, n // ROWS_PER_CHUNK))


@njit(cache=True, parallel=True)
def _encode_parallel(nchunks, pre, select, k, refit, ridge, gram, latent_bias, w_bias, bias_sq, out_idx, out_val,
                     out_norm):
    n = pre.shape[0]
    for c in prange(nchunks):
        _encode_chunk(c * n // nchunks, (c + 1) * n // nchunks, pre, select, k, refit, ridge, gram, latent_bias,
                      w_bias, bias_sq, out_idx, out_val, out_norm)


def encode_rows(pre: np.ndarray, k: int, gram: np.ndarray, latent_bias: np.ndarray, w_bias: np.ndarray,
                bias_sq: float, refit: bool, select: np.ndarray | None = None, ridge: float = RIDGE,
                index_dtype: np.dtype = np.dtype(np.uint16)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of pre-activations ``pre`` (n, h) float32: latent indices (n, k) ``index_dtype``,
    values (n, k) float32 sorted descending, and reconstruction norms (n,) float32.

    ``gram`` = W W^T (h, h), ``w_bias`` = W pre_bias (h,), ``bias_sq`` = ||pre_bias||^2;
    ``select`` (h,) shifts the selection only (None: none); ``refit`` solves the values by
    least squares on the support (ridge ``ridge``) instead of keeping the pre-activations.
    """
    pre = np.ascontiguousarray(pre, dtype=np.float32)
    n = pre.shape[0]
    out_idx = np.empty((n, k), dtype=index_dtype)
    out_val = np.empty((n, k), dtype=np.float32)
    out_norm = np.empty(n, dtype=np.float32)
    shift = np.empty(0, np.float32) if select is None else np.ascontiguousarray(select, dtype=np.float32)
    args = (pre, shift, k, bool(refit), float(ridge), gram, latent_bias, w_bias, float(bias_sq), out_idx, out_val,
            out_norm)
    nchunks = _row_chunks(n)
    if nchunks <= 1:
        _encode_chunk(0, n, *args)
    else:
        _encode_parallel(nchunks, *args)
    return out_idx, out_val, out_norm


@njit(cache=True)
def _support_chunk(r0, r1, score, unbias, k, out):
    idx = np.empty(k, dtype=np.int64)
    key = np.empty(k, dtype=np.float32)
    none = np.empty(0, dtype=np.float32)
    scores, block_max = top_k_scratch(score.shape[1])
    for r in range(r0, r1):
        row = score[r]
        _top_k(row, none, idx, key, scores, block_max)
        for a in range(k):
            out[r, a] = idx[a] if row[idx[a]] - unbias[idx[a]] > 0.0 else -1


@njit(cache=True, parallel=True)
def _support_parallel(nchunks, score, unbias, k, out):
    n = score.shape[0]
    for c in prange(nchunks):
        _support_chunk(c * n // nchunks, (c + 1) * n // nchunks, score, unbias, k, out)


def support_rows(score: np.ndarray, unbias: np.ndarray, k: int) -> np.ndarray:
    """Support of each row's k-code (n, k) int64, unordered: the k largest ``score`` (n, h)
    entries (selection scores), -1 in the slots whose unbiased value ``score - unbias`` is not
    positive (ReLU empties them). Compiled: for one query, numpy's argpartition and the
    gathers around it cost more than the heap."""
    score = np.ascontiguousarray(score, dtype=np.float32)
    out = np.empty((score.shape[0], k), dtype=np.int64)
    args = (score, np.ascontiguousarray(unbias, dtype=np.float32), int(k), out)
    nchunks = _row_chunks(score.shape[0])
    if nchunks <= 1:
        _support_chunk(0, score.shape[0], *args)
    else:
        _support_parallel(nchunks, *args)
    return out
