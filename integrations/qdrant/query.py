"""Querying an exported collection: :func:`search`, sparse or hybrid (RRF with the dense vectors);
Qdrant's candidates are re-scored by :meth:`CSRIndex.rescore` as ``CSRIndex.search`` would."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from csr_index.validation import check_positive

from .metadata import DEFAULT_DENSE_VECTOR_NAME, DEFAULT_VECTOR_NAME, check_search_metadata
from .targets import Target, open_target
from .validation import check_name, check_trained, sparse_rows

if TYPE_CHECKING:
    from csr_index.index import CSRIndex

__all__ = ["search"]

log = logging.getLogger(__name__)

SCORE_MODES = ("code", "asymmetric")


def search(
    index: "CSRIndex",
    client: Target,
    collection_name: str | None,
    xq: Any,
    topk: int = 10,
    *,
    query_k: int | None = None,
    score: str = "code",
    rerank: int | None = None,
    candidates: int | None = None,
    hybrid: bool = False,
    rrf_k: int = 2,
    vector_name: str = DEFAULT_VECTOR_NAME,
    dense_vector_name: str = DEFAULT_DENSE_VECTOR_NAME,
    batch_size: int = 64,
    check: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Search a collection exported from ``index`` with dense queries ``xq`` (nq, d): ``(D, I)``
    like ``CSRIndex.search`` (float32 descending, int64 ids, (-inf, -1) padding).

    Queries are encoded by the index's adapter (``query_k`` latents, default the index's k) and
    sent in batches of ``batch_size`` (``query_batch_points``). Qdrant returns the
    best ``candidates`` points by code x code; then, as in ``CSRIndex.search``:

    score: ``"code"`` keeps Qdrant's ranking (equal to ``index.search(score="code")``);
        ``"asymmetric"`` re-scores the candidates with the asymmetric score (the
        dense query against each doc's reconstruction, as ``CSRIndex.search``). It equals
        ``index.search(score="asymmetric")`` when that top list lies within Qdrant's
        candidates (docs sharing no latent with the query code are never candidates).
    rerank: re-rank the best ``rerank`` exactly against the stored originals
        (store_vectors=True). Default as CSRIndex: max(100, 10 * topk) when originals
        are stored, else 0. ``score="code", rerank=R`` equals
        ``index.search(xq, topk, score="code", rerank=R)``.
    candidates: how many points Qdrant returns per query; default max(topk, rerank)
        for "code", 10x that (at least 1000) for "asymmetric".
    hybrid: fuse the sparse ranking with a dense one (the collection needs the dense
        vectors: ``export(..., dense=True)``) by Qdrant's reciprocal rank fusion
        (``rrf_k``); the fused candidates are then re-scored as above, and with
        score="code" and no rerank D holds the RRF scores.
    check: verify the collection's layout and csr_index metadata (same adapter, same
        value convention) before querying.
    Re-scoring uses :meth:`CSRIndex.rescore`, which anyone can apply to other candidates.
    """
    check_trained(index)
    topk = check_positive(topk, "topk", 1 << 31)
    query_k = None if query_k is None else check_positive(query_k, "query_k", index.k)
    if score not in SCORE_MODES:
        raise ValueError(f"score must be one of {SCORE_MODES}, got {score!r}")
    if rerank is None:
        rerank = max(100, 10 * topk) if index.store_vectors else 0
    elif isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
        raise ValueError(f"rerank must be a non-negative integer, got {rerank!r}")
    if rerank and not index.store_vectors:
        raise ValueError("rerank needs the original vectors: build the index with store_vectors=True")
    shortlist = max(topk, int(rerank))
    if candidates is None:
        candidates = shortlist if score == "code" else max(10 * shortlist, 1000)
    candidates = check_positive(candidates, "candidates")
    if candidates < shortlist:
        raise ValueError(f"candidates={candidates} is below the shortlist max(topk, rerank)={shortlist}")
    rrf_k = check_positive(rrf_k, "rrf_k")
    batch_size = check_positive(batch_size, "batch_size")
    vector_name = check_name(vector_name, "vector_name")
    xq_prepared = index.prepare(xq, "queries")
    nq = len(xq_prepared)

    target = open_target(client, collection_name, vector_name, dense_vector_name if hybrid else None)
    if check:
        target.check_layout(idf=None, dense_size=index.d if hybrid else None)
        check_search_metadata(target.read_metadata(), index, target.describe(), vector_name)
        if target.sparse_has_idf():
            log.warning("%s applies IDF to %r: scores will differ from CSRIndex.search", target.describe(),
                        vector_name)

    codes = index.query_code_vectors(xq, query_k)  # None: the index's k
    sparse = [row if row[0] else None for row in sparse_rows(codes.indices, codes.values)]
    D = np.full((nq, candidates), -np.inf, dtype=np.float32)
    I = np.full((nq, candidates), -1, dtype=np.int64)
    with tqdm(total=nq, disable=not progress, unit="q", desc=f"search {target.describe()}") as bar:
        for s in range(0, nq, batch_size):
            e = min(nq, s + batch_size)
            results = target.query(sparse[s:e], xq_prepared[s:e] if hybrid else None, candidates, rrf_k)
            for qi, hits in enumerate(results, start=s):
                for j, (pid, sc) in enumerate(hits[:candidates]):
                    if isinstance(pid, bool) or not isinstance(pid, (int, np.integer)):
                        raise ValueError(
                            f"{target.describe()} returned point id {pid!r}; csr-index needs integer ids "
                            "(the index's ids, as export() writes them)"
                        )
                    I[qi, j] = pid
                    D[qi, j] = sc
            bar.update(e - s)
    if score == "asymmetric":
        D, I = _rescore(index, xq, I, shortlist, "asymmetric", query_k)
    else:
        D, I = D[:, :shortlist], I[:, :shortlist]
    if rerank:
        D, I = _rescore(index, xq, I, topk, "exact")
    return D[:, :topk], I[:, :topk]


def _rescore(
    index: "CSRIndex", xq: Any, ids: np.ndarray, topk: int, score: str, query_k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`CSRIndex.rescore`, with a hint when Qdrant returned ids the index lacks."""
    try:
        return index.rescore(xq, ids, topk, score=score, query_k=query_k)
    except KeyError as exc:
        raise KeyError(f"{exc.args[0]} (was the collection exported from another index?)") from exc
