"""One query's weighed code in one product and one compiled call: the single-query path of a
search served by another engine (Qdrant).

``encoder.query_code_vectors(x)`` and the conversion of its slots to (indices, values) rows take
some twenty numpy calls. Sent one query at a time, with the search engine running in between and
evicting their code and data from the caches, those calls cost several times what they cost
warm, a sizeable share of a single query's latency. :func:`query_row` does the
same arithmetic in one BLAS product and one numba call: the product with W^T, then L2
normalisation (metric 'cosine'), the top-k and refit of :mod:`csr_index.sparsify`, the latent
weights, normalisation, and slots ordered by latent. It agrees with the general path up to float
rounding (the product is scaled after, not before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit

from .sparsify import RIDGE, _encode_chunk

if TYPE_CHECKING:
    from .encoder import CSREncoder

__all__ = ["query_row"]


@njit(cache=True)
def _query_code(x, pre, shift, select, k, refit, gram, latent_bias, w_bias, bias_sq, weight, cosine, out_x, out_idx,
                out_val):
    """From a query ``x`` (d,) and its product ``pre`` = x W^T (1, h, overwritten): the prepared
    query into ``out_x`` (d,) and its weighed code's non-zero slots, by ascending latent, into
    ``out_idx`` / ``out_val``; returns their count, or -1 (a NaN or inf) or -2 (a zero vector
    under cosine) for the caller to report."""
    d, h = x.shape[0], pre.shape[1]
    sq = 0.0
    for j in range(d):
        if not np.isfinite(x[j]):
            return -1
        sq += np.float64(x[j]) * x[j]
    norm = np.float32(1.0)
    if cosine:
        if sq == 0.0:
            return -2
        norm = np.float32(np.sqrt(sq))
    for j in range(d):
        out_x[j] = x[j] / norm
    row = pre[0]
    for c in range(h):  # (x / |x|) W^T + shift: the pre-activations plus the selection bias
        row[c] = row[c] / norm + shift[c]
    idx = np.empty((1, k), dtype=np.int64)
    val = np.empty((1, k), dtype=np.float32)
    code_norm = np.empty(1, dtype=np.float32)
    _encode_chunk(0, 1, pre, select, k, refit, RIDGE, gram, latent_bias, w_bias, bias_sq, idx, val, code_norm)
    n = 0
    total = np.float32(0.0)
    for a in range(k):
        if val[0, a] != 0.0:
            v = val[0, a] * weight[idx[0, a]]
            out_idx[n] = idx[0, a]
            out_val[n] = v
            total += v * v
            n += 1
    if cosine and total > 0.0:
        scale = np.float32(1.0) / np.sqrt(total)
        for a in range(n):
            out_val[a] *= scale
    for a in range(1, n):  # insertion sort by latent (k is small)
        i, v = out_idx[a], out_val[a]
        b = a - 1
        while b >= 0 and out_idx[b] > i:
            out_idx[b + 1], out_val[b + 1] = out_idx[b], out_val[b]
            b -= 1
        out_idx[b + 1], out_val[b + 1] = i, v
    return n


def query_row(encoder: "CSREncoder", x: Any, k: int) -> tuple[np.ndarray, list[int], list[float]] | None:
    """For one query ``x``, a float32 numpy array (1, d): its prepared vector (1, d) and its weighed
    code at ``k`` latents (``encoder.query_code_vectors(x, k)``) as the latent indices, ascending,
    and values of its non-zero slots. None where this path does not apply (any other input, an
    encoder on a GPU or wider than the compiled kernels take): use the general one. Invalid input
    (NaN, inf, a zero vector under cosine) raises the same errors as ``encoder.prepare``."""
    tables = encoder.cpu_tables()
    if tables is None or not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (1, encoder.d)):
        return None
    WT, shift, select, latent_bias, w_bias, bias_sq, gram = tables
    out_x = np.empty((1, encoder.d), dtype=np.float32)
    out_idx = np.empty(k, dtype=np.int64)
    out_val = np.empty(k, dtype=np.float32)
    n = _query_code(x[0], x @ WT, shift, np.empty(0, np.float32) if select is None else select,
                    k, bool(encoder.config.refit), gram, latent_bias, w_bias, bias_sq, encoder.latent_weight,
                    encoder.metric == "cosine", out_x[0], out_idx, out_val)
    if n < 0:
        encoder.prepare(x, "queries")  # raises the general path's error
        return None
    return out_x, out_idx[:n].tolist(), out_val[:n].tolist()
