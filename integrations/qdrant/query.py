"""Querying an exported collection: :func:`search`, sparse or hybrid (RRF with the dense vectors).
Qdrant's candidates are re-ranked either on the server (the dense vectors stored in the same
points, one Query API request: nothing local but the adapter) or locally by
:meth:`CSRIndex.rescore`, as ``CSRIndex.search`` would; :func:`fetch_payload` reads result payloads."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from csr_index.progress import progress_bar
from csr_index.query_code import query_row
from csr_index.scoring import default_rerank
from csr_index.validation import check_positive

from .metadata import DEFAULT_DENSE_VECTOR_NAME, DEFAULT_VECTOR_NAME, check_search_metadata
from .plan import QueryPlan
from .targets import Target, open_target
from .validation import Model, SparseRow, check_name, encoder_of, index_of, sparse_rows

if TYPE_CHECKING:
    from csr_index.index import CSRIndex

__all__ = ["search", "Searcher", "fetch_payload"]

log = logging.getLogger(__name__)

SCORE_MODES = ("code", "asymmetric")
RERANK_ON = ("auto", "server", "local")


def search(
    model: Model,
    client: Target,
    collection_name: str | None,
    xq: Any,
    topk: int = 10,
    *,
    query_k: int | None = None,
    score: str = "code",
    rerank: int | None = None,
    rerank_on: str = "auto",
    candidates: int | None = None,
    hybrid: bool = False,
    rrf_k: int = 2,
    quantization_rescore: bool | None = None,
    oversampling: float | None = None,
    vector_name: str = DEFAULT_VECTOR_NAME,
    dense_vector_name: str = DEFAULT_DENSE_VECTOR_NAME,
    batch_size: int = 64,
    check: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Search a collection exported with the adapter of ``model`` (a :class:`CSRIndex`, or just its
    :class:`CSREncoder`) with dense queries ``xq`` (nq, d): ``(D, I)`` like ``CSRIndex.search``
    (float32 descending, int64 point ids, (-inf, -1) padding).

    Queries are encoded by the adapter (``query_k`` latents, default k) and sent in batches of
    ``batch_size`` (``query_batch_points``). Qdrant finds the best ``candidates`` points by
    code x code (or, with ``hybrid``, by its reciprocal rank fusion (``rrf_k``) of that ranking
    and dense search); then:

    rerank: how many of them to re-rank exactly. Default 3 * max(100, 10 * topk) (a code x code
        shortlist, see :func:`csr_index.scoring.default_rerank`) when a re-ranking is available
        (see ``rerank_on``), else 0.
    rerank_on: ``"server"``: Qdrant re-scores the sparse top ``rerank`` by the dense vector
        stored in each point, in the same request (Query API: the sparse search as a
        ``prefetch``, then ``query=dense``); needs an export with dense vectors and nothing but
        the adapter here. D is then the cosine (dot product of the prepared vectors) as Qdrant
        computes it, with its datatype and quantization. ``"local"``: re-rank against the
        originals of a CSRIndex built with store_vectors=True (:meth:`CSRIndex.rescore`).
        ``"auto"``: local when ``model`` is a CSRIndex with originals, else server when the
        collection has the dense vectors, else no re-rank.
    score: ``"code"`` keeps Qdrant's ranking (= ``index.search(score="code")``);
        ``"asymmetric"`` (a CSRIndex only; not with server re-rank) re-scores the candidates
        with the asymmetric score, which equals ``index.search(score="asymmetric")`` when
        that top list lies within Qdrant's candidates.
    candidates: points per query from the first stage; default max(topk, rerank), 10x that
        (at least 1000) for "asymmetric".
    quantization_rescore, oversampling: Qdrant's ``QuantizationSearchParams`` for server
        re-ranking over quantized dense vectors (None: Qdrant's defaults, which re-score at most
        the top ``topk``: that reorders them but brings no other candidate in). Over int8
        vectors ``rescore=True, oversampling=3`` keeps the recall of unquantized ones (pypi 20k,
        R = 200: recall@10 0.961 vs 0.951 with the defaults) and re-ranks faster than float32;
        ``rescore=True, oversampling=rerank/topk`` scores every candidate with the originals.
    check: verify the collection's layout and csr_index metadata (same adapter, same value
        convention) before querying.

    Each call checks the options and the collection again; to send many searches with the same
    options, make a :class:`Searcher` once and call its ``search``.
    """
    return Searcher(model, client, collection_name, query_k=query_k, score=score, rerank=rerank,
                    rerank_on=rerank_on, candidates=candidates, hybrid=hybrid, rrf_k=rrf_k,
                    quantization_rescore=quantization_rescore, oversampling=oversampling,
                    vector_name=vector_name, dense_vector_name=dense_vector_name, batch_size=batch_size,
                    check=check).search(xq, topk, progress=progress)


class Searcher:
    """Searches of one collection with fixed options (those of :func:`search`, which makes one per
    call), the options and the collection checked once, when it is made: for many searches, e.g.
    one query at a time, where those checks would cost more than encoding the query.
    ``rerank`` and ``candidates`` left as None follow each search's ``topk``.

    >>> searcher = cq.Searcher(encoder, client, "docs")
    >>> D, I = searcher.search(xq, 10)
    """

    def __init__(
        self,
        model: Model,
        client: Target,
        collection_name: str | None,
        *,
        query_k: int | None = None,
        score: str = "code",
        rerank: int | None = None,
        rerank_on: str = "auto",
        candidates: int | None = None,
        hybrid: bool = False,
        rrf_k: int = 2,
        quantization_rescore: bool | None = None,
        oversampling: float | None = None,
        vector_name: str = DEFAULT_VECTOR_NAME,
        dense_vector_name: str = DEFAULT_DENSE_VECTOR_NAME,
        batch_size: int = 64,
        check: bool = True,
    ) -> None:
        encoder, index = encoder_of(model), index_of(model)
        self.encoder, self.index = encoder, index
        self.query_k = None if query_k is None else check_positive(query_k, "query_k", encoder.k)
        if score not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, got {score!r}")
        if rerank_on not in RERANK_ON:
            raise ValueError(f"rerank_on must be one of {RERANK_ON}, got {rerank_on!r}")
        if rerank is not None and (isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0):
            raise ValueError(f"rerank must be a non-negative integer, got {rerank!r}")
        if score == "asymmetric" and index is None:
            raise ValueError('score="asymmetric" re-scores candidates with their stored codes: pass the CSRIndex '
                             "(or use server-side re-ranking of the dense vectors: rerank_on='server')")
        if oversampling is not None and not (isinstance(oversampling, (int, float)) and oversampling >= 1):
            raise ValueError(f"oversampling must be a number >= 1, got {oversampling!r}")
        self.rrf_k = check_positive(rrf_k, "rrf_k")
        self.batch_size = check_positive(batch_size, "batch_size")
        vector_name = check_name(vector_name, "vector_name")
        local_vectors = index is not None and index.store_vectors

        self.target = open_target(client, collection_name, vector_name, dense_vector_name)
        self.where = where = self.target.describe()
        if rerank_on == "auto":
            rerank_on = ("local" if local_vectors else "server" if rerank != 0 and score == "code"
                         and self.target.has_dense(encoder.d) else "none")
        if rerank_on == "local" and rerank != 0 and not local_vectors:
            raise ValueError("local re-ranking needs the original vectors: pass a CSRIndex built with "
                             "store_vectors=True, or re-rank on the server (rerank_on='server')")
        if rerank_on == "none" and rerank:
            raise ValueError(f"rerank={rerank} needs the original vectors (a CSRIndex built with store_vectors=True) "
                             f"or dense vectors in {where} (export with dense=True) for server-side re-ranking")
        if rerank_on == "server" and score == "asymmetric":
            raise ValueError('score="asymmetric" re-scores locally; it does not combine with rerank_on="server"')
        if candidates is not None:
            candidates = check_positive(candidates, "candidates")
        self.score, self.rerank_on, self.rerank, self.candidates = score, rerank_on, rerank, candidates
        self.hybrid = bool(hybrid)
        self.rescore = quantization_rescore
        self.oversampling = None if oversampling is None else float(oversampling)
        if check:
            server = rerank_on == "server" and rerank != 0
            self.target.check_layout(idf=None, dense_size=encoder.d if hybrid or server else None)
            check_search_metadata(self.target.read_metadata(), encoder, where, vector_name)
            if self.target.sparse_has_idf():
                log.warning("%s applies IDF to %r: scores will differ from CSRIndex.search", where, vector_name)
            if hybrid and self.target.dense_graph() is False:
                log.warning("%s has no HNSW graph on %r (dense_hnsw=False, the default for re-ranking): the dense "
                            "prefetch of hybrid search scans every point; export with dense_hnsw=True for hybrid "
                            "search", where, dense_vector_name)

    def plan(self, topk: int) -> tuple[QueryPlan, int]:
        """The request one query of a ``topk`` search sends, and the re-rank depth."""
        rerank = self.rerank
        if rerank is None:
            rerank = default_rerank("code", topk) if self.rerank_on in ("local", "server") else 0
        server = self.rerank_on == "server" and rerank > 0
        shortlist = max(topk, int(rerank))
        candidates = self.candidates
        if candidates is None:
            candidates = shortlist if self.score == "code" else max(10 * shortlist, 1000)
        if candidates < shortlist:
            raise ValueError(f"candidates={candidates} is below the shortlist max(topk, rerank)={shortlist}")
        if server and candidates != rerank:
            log.debug("the server re-ranks all %d candidates (rerank=%d)", candidates, rerank)
        plan = QueryPlan(candidates=candidates, limit=topk if server else candidates, hybrid=self.hybrid,
                         rrf_k=self.rrf_k, server_rerank=server, rescore=self.rescore, oversampling=self.oversampling)
        return plan, int(rerank)

    def search(self, xq: Any, topk: int = 10, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` of the ``topk`` best points for each query of ``xq`` (nq, d); see :func:`search`."""
        topk = check_positive(topk, "topk", 1 << 31)
        plan, rerank = self.plan(topk)
        encoder, where = self.encoder, self.where
        one = query_row(encoder, xq, self.query_k or encoder.k)  # a single query: one compiled call
        if one is not None:
            xq_prepared, indices, values = one
            sparse: list[SparseRow | None] = [(indices, values) if indices else None]
        else:
            xq_prepared = encoder.prepare(xq, "queries")
            codes = encoder.weigh(encoder.encode_prepared(xq_prepared, self.query_k or encoder.k)[0])
            sparse = [row if row[0] else None for row in sparse_rows(codes.indices, codes.values)]
        nq = len(xq_prepared)
        D = np.full((nq, plan.limit), -np.inf, dtype=np.float32)
        I = np.full((nq, plan.limit), -1, dtype=np.int64)
        # no bar unless asked: even a disabled tqdm costs tens of microseconds, a lot for a single query
        bar = progress_bar(total=nq, unit="q", desc=f"search {where}") if progress else None
        try:
            for s in range(0, nq, self.batch_size):
                e = min(nq, s + self.batch_size)
                dense = xq_prepared[s:e] if plan.hybrid or plan.server_rerank else None
                for qi, hits in enumerate(self.target.query(sparse[s:e], dense, plan), start=s):
                    for j, (pid, sc) in enumerate(hits[: plan.limit]):
                        if isinstance(pid, bool) or not isinstance(pid, (int, np.integer)):
                            raise ValueError(
                                f"{where} returned point id {pid!r}; csr-index needs integer ids "
                                "(as export() and export_parquet() write them)"
                            )
                        I[qi, j] = pid
                        D[qi, j] = sc
                if bar is not None:
                    bar.update(e - s)
        finally:
            if bar is not None:
                bar.close()
        if plan.server_rerank:
            return D[:, :topk], I[:, :topk]
        shortlist = max(topk, rerank)
        if self.score == "asymmetric":
            D, I = _rescore(self.index, xq, I, shortlist, "asymmetric", self.query_k)
        else:
            D, I = D[:, :shortlist], I[:, :shortlist]
        if rerank:
            D, I = _rescore(self.index, xq, I, topk, "exact")
        return D[:, :topk], I[:, :topk]


def fetch_payload(client: Target, collection_name: str | None, ids: Any, field: str = "key",
                  *, vector_name: str = DEFAULT_VECTOR_NAME) -> np.ndarray:
    """The payload ``field`` of each point id in ``ids`` (any shape; -1 = none), as an object array
    of the same shape with None where a point or its field is missing: e.g. the string keys that
    ``export_parquet`` stores when the id column holds strings."""
    arr = np.asarray(ids, dtype=np.int64)
    wanted = sorted({int(i) for i in arr.reshape(-1) if i >= 0})
    target = open_target(client, collection_name, vector_name, None)
    found: dict[int, dict] = {}
    for s in range(0, len(wanted), 1000):
        found.update(target.payloads(wanted[s : s + 1000], [field]))
    out = np.array([found.get(int(i), {}).get(field) if i >= 0 else None for i in arr.reshape(-1)], dtype=object)
    return out.reshape(arr.shape)


def _rescore(
    index: "CSRIndex", xq: Any, ids: np.ndarray, topk: int, score: str, query_k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`CSRIndex.rescore`, with a hint when Qdrant returned ids the index lacks."""
    try:
        return index.rescore(xq, ids, topk, score=score, query_k=query_k)
    except KeyError as exc:
        raise KeyError(f"{exc.args[0]} (was the collection exported from another index?)") from exc
