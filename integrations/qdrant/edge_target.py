"""An :class:`EdgeCollection` (or a bare ``qdrant_edge.EdgeShard``) as an export/search target."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._deps import qdrant_edge
from .edge import EdgeCollection, _count, _edge_call
from .layout import Storage
from .metadata import check_export_metadata
from .plan import QueryPlan
from .validation import SparseRow

__all__ = ["EdgeTarget"]

log = logging.getLogger(__name__)


class EdgeTarget:
    """An :class:`EdgeCollection` (or a bare ``qdrant_edge.EdgeShard``, without layout or metadata
    checks) as an export/search target. Uploads from one thread (``local``)."""

    local = True

    def __init__(self, edge: Any, vector_name: str, dense_name: str | None) -> None:
        if isinstance(edge, EdgeCollection):
            if vector_name != edge.vector_name:
                raise ValueError(f"vector_name={vector_name!r} but {edge!r} was opened with "
                                 f"vector_name={edge.vector_name!r}")
            if dense_name is not None and dense_name != edge.dense_vector_name:
                raise ValueError(f"dense_vector_name={dense_name!r} but {edge!r} was opened with "
                                 f"dense_vector_name={edge.dense_vector_name!r}")
            self.edge: EdgeCollection | None = edge
            self.shard = edge.shard
        else:
            self.edge, self.shard = None, edge
        self.vector_name = vector_name
        self.dense_name = dense_name

    def describe(self) -> str:
        return f"qdrant-edge shard {self.edge.path}" if self.edge is not None else "qdrant-edge shard"

    def prepare(self, *, idf: bool, dense_size: int | None, metadata: dict | None, recreate: bool,
                create: Mapping[str, Any], storage: Storage | None = None) -> None:
        if recreate:
            raise ValueError("recreate=True does not apply to a qdrant-edge shard: delete its directory instead")
        if self.edge is None:
            if metadata:
                log.debug("bare EdgeShard: no place for csr_index metadata; use EdgeCollection to keep it")
            return
        self.edge._check_layout(idf, dense_size, storage)
        if metadata:
            found = self.edge.metadata()
            check_export_metadata(found, metadata, self.describe(), "export to a new directory")
            if not found:
                self.edge.write_metadata(metadata)

    def check_layout(self, *, idf: bool | None, dense_size: int | None, storage: Storage | None = None) -> None:
        if self.edge is not None:
            self.edge._check_layout(idf, dense_size, storage)

    def has_dense(self, size: int) -> bool:
        """Whether the shard has the dense vector of this size (a bare EdgeShard: unknown, False)."""
        return self.edge is not None and self.edge.dense_size() == size

    def sparse_has_idf(self) -> bool:
        return self.edge.has_idf if self.edge is not None else False

    def dense_graph(self) -> bool | None:
        return self.edge.dense_graph() if self.edge is not None else None

    def read_metadata(self) -> dict | None:
        return self.edge.metadata() if self.edge is not None else None

    def count(self) -> int:
        return _count(self.shard)

    def existing(self, ids: list[int]) -> set[int]:
        records = _edge_call("retrieve", lambda: self.shard.retrieve(ids, False, False))
        return {int(r.id) for r in records}

    def upsert(self, ids: list[int], sparse: list[SparseRow], dense: list[list[float]] | None,
               payloads: list[dict] | None) -> None:
        qe = qdrant_edge()
        points = []
        for j, (pid, (indices, values)) in enumerate(zip(ids, sparse)):
            vector: dict[str, Any] = {self.vector_name: qe.SparseVector(indices, values)}
            if dense is not None:
                vector[self.dense_name] = dense[j]
            points.append(qe.Point(pid, vector, payloads[j] if payloads is not None else None))
        _edge_call("upsert", lambda: self.shard.update(qe.UpdateOperation.upsert_points(points)))

    def flush(self) -> None:
        _edge_call("flush", self.shard.flush)

    def query(self, sparse: list[SparseRow | None], dense: np.ndarray | None,
              plan: QueryPlan) -> list[list[tuple[Any, float]]]:
        """(id, score) hits per query as ``plan`` says (see :meth:`ClientTarget.query`)."""
        qe = qdrant_edge()
        params = None
        if plan.server_rerank and (plan.rescore is not None or plan.oversampling is not None):
            params = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=plan.rescore,
                                                                              oversampling=plan.oversampling))
        requests, slots = [], []
        for qi, sv in enumerate(sparse):
            sq = (qe.Query.Nearest(qe.SparseVector(sv[0], sv[1]), using=self.vector_name)
                  if sv is not None else None)
            if plan.hybrid:
                prefetches = [qe.Prefetch(limit=plan.candidates,
                                          query=qe.Query.Nearest(dense[qi].tolist(), using=self.dense_name))]
                if sq is not None:
                    prefetches.insert(0, qe.Prefetch(limit=plan.candidates, query=sq))
                stage: dict[str, Any] = {"query": qe.Fusion.Rrf(k=plan.rrf_k), "prefetches": prefetches}
            elif sq is None:
                continue
            else:
                stage = {"query": sq}
            if plan.server_rerank:
                req = qe.QueryRequest(limit=plan.limit, query=qe.Query.Nearest(dense[qi].tolist(), using=self.dense_name),
                                      prefetches=[qe.Prefetch(limit=plan.candidates, **stage)], params=params,
                                      with_payload=False, with_vector=False)
            else:
                req = qe.QueryRequest(limit=plan.candidates, **stage, with_payload=False, with_vector=False)
            requests.append(req)
            slots.append(qi)
        out: list[list[tuple[Any, float]]] = [[] for _ in sparse]
        if requests:
            results = _edge_call("query", lambda: self.shard.query_batch(qe.QueryBatchRequest(requests)))
            for qi, points in zip(slots, results):
                out[qi] = [(p.id, p.score) for p in points]
        return out

    def payloads(self, ids: list[int], fields: list[str]) -> dict[int, dict]:
        """Payload ``fields`` of the given points (missing points are left out)."""
        records = _edge_call("retrieve", lambda: self.shard.retrieve(ids, fields, False))
        return {int(r.id): dict(r.payload or {}) for r in records}
