"""Compile the search and encoding kernels up front (:func:`warm_up`), not in the first search."""

from __future__ import annotations

import logging
import time

import numpy as np

from .codes import SparseCodes
from .engines import QueryBatch, make_engine
from .rerank import rerank_topn
from .sparsify import encode_rows, support_rows

__all__ = ["warm_up"]

log = logging.getLogger(__name__)


def warm_up() -> float:
    """Compile (first run in a fresh environment, 10-30 s) or load from numba's on-disk cache the
    kernels of the default search path — the pruned and inverted engines, one query and a
    threaded batch, the float16 and int8 re-ranks — and of encoding, so that cost is paid here, visibly, not by the
    first search. Returns the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    docs = SparseCodes(rng.integers(0, 16, (64, 4)).astype(np.uint16), rng.random((64, 4), np.float32), 16)
    for nq in (1, 3):
        terms = SparseCodes(docs.indices[:nq], docs.values[:nq], 16)
        for batch in (QueryBatch(terms), QueryBatch(terms, dense=rng.random((nq, 16), np.float32),
                                                    offset=np.zeros(nq, np.float32))):
            for name in ("pruned", "inverted"):
                make_engine(name, docs, threads=2).search(batch, 5, np.ones(64, np.float32), np.zeros(64, np.uint8))
        rerank_topn(rng.random((nq, 8), np.float32), np.zeros((nq, 4), np.int64), rng.random((64, 8)).astype(np.float16),
                    2, threads=2)
        rerank_topn(rng.random((nq, 8), np.float32), np.zeros((nq, 4), np.int64), np.ones((64, 8), np.int8), 2,
                    scales=np.ones(64, np.float32), threads=2)  # int8 originals (vectors_dtype="int8")
    support_rows(rng.random((1, 16), np.float32), np.zeros(16, np.float32), 4)
    gram = rng.random((16, 16), np.float32)
    encode_rows(rng.random((600, 16), np.float32), 4, gram @ gram.T + np.eye(16, dtype=np.float32),
                np.zeros(16, np.float32), np.zeros(16, np.float32), 0.0, refit=True)
    seconds = time.perf_counter() - start
    log.info("search kernels ready in %.1f s%s", seconds, " (compiled now; numba caches them for later runs)"
             if seconds > 2 else "")
    return seconds
