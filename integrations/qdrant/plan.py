"""What one search asks of a collection, whatever the backend (qdrant-client or qdrant-edge)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueryPlan:
    """One search request per query.

    candidates: points the first stage keeps per query (sparse code x code, or the RRF of
        sparse and dense when ``hybrid``).
    limit: points returned per query (``candidates`` unless ``server_rerank``).
    server_rerank: re-score the candidates by the dense vector stored in the same points
        (Qdrant's Query API: the first stage as a ``prefetch``, then ``query=dense``).
    rescore, oversampling: Qdrant's quantization search parameters for that re-scoring.
    """

    candidates: int
    limit: int
    hybrid: bool = False
    rrf_k: int = 2
    server_rerank: bool = False
    rescore: bool | None = None
    oversampling: float | None = None
