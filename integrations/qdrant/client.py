"""A collection behind a ``qdrant_client.QdrantClient`` as an export/search target: a server or
cluster (REST or gRPC) or local mode, one code path."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._deps import qdrant_models
from .layout import Storage, check_storage, found_client, graph_client
from .metadata import METADATA_KEY, check_export_metadata
from .plan import QueryPlan
from .validation import SparseRow, check_name

log = logging.getLogger(__name__)


def _is_idf(sparse_params: Any) -> bool:
    modifier = getattr(sparse_params, "modifier", None)
    return modifier is not None and str(getattr(modifier, "value", modifier)).lower() == "idf"


class ClientTarget:
    """Collection ``collection_name`` of ``client``; ``wait``: wait for each upsert to be applied."""

    def __init__(self, client: Any, collection_name: Any, vector_name: str, dense_name: str | None,
                 wait: bool = True) -> None:
        if not hasattr(client, "query_batch_points"):
            raise TypeError(
                f"client must be a qdrant_client.QdrantClient or an EdgeCollection, got {type(client).__name__}"
            )
        self.client = client
        self.name = check_name(collection_name, "collection_name")
        self.vector_name = vector_name
        self.dense_name = dense_name
        self.wait = wait
        self._info_cache: Any = None

    def describe(self) -> str:
        return f"Qdrant collection {self.name!r}"

    @property
    def local(self) -> bool:
        opts = getattr(self.client, "init_options", {}) or {}
        return opts.get("path") is not None or opts.get("location") == ":memory:"

    # -- collection
    def _info(self) -> Any:
        """The collection's description, fetched once per target (one export or search call)."""
        if self._info_cache is None:
            self._info_cache = self.client.get_collection(self.name)
        return self._info_cache

    def prepare(self, *, idf: bool, dense_size: int | None, metadata: dict | None, recreate: bool,
                create: Mapping[str, Any], storage: Storage | None = None) -> None:
        models = qdrant_models()
        storage = storage or Storage()
        if recreate and self.client.collection_exists(self.name):
            log.info("deleting %s (recreate=True)", self.describe())
            self.client.delete_collection(self.name)
        if not self.client.collection_exists(self.name):
            sparse = {self.vector_name: storage.client_sparse(models, idf=idf, on_disk=create.get("on_disk"))}
            dense = {self.dense_name: storage.client_dense(models, dense_size)} if dense_size else None
            extra = {k: v for k, v in create.items() if k != "on_disk" and v is not None}
            log.info("creating %s (sparse vector %r%s%s; %s)", self.describe(), self.vector_name,
                     ", IDF" if idf else "", f", dense {self.dense_name!r} d={dense_size}" if dense_size else "",
                     storage)
            if self.local and storage != Storage():
                log.info("qdrant-client local mode records but does not apply datatypes or quantization")
            self.client.create_collection(
                self.name, vectors_config=dense, sparse_vectors_config=sparse,
                metadata={METADATA_KEY: metadata} if metadata else None, **extra,
            )
            return
        self.check_layout(idf=idf, dense_size=dense_size, storage=storage)
        if metadata:
            found = self.read_metadata()
            check_export_metadata(found, metadata, self.describe(), "export to a new collection or pass recreate=True")
            if not found:
                self.client.update_collection(self.name, metadata={METADATA_KEY: metadata})
                self._info_cache = None

    def check_layout(self, *, idf: bool | None, dense_size: int | None, storage: Storage | None = None) -> None:
        """Raise ValueError when the collection lacks the vectors this export/search needs, or was
        created with other storage options than ``storage`` asks for."""
        params = self._info().config.params
        sparse = params.sparse_vectors or {}
        if self.vector_name not in sparse:
            raise ValueError(
                f"{self.describe()} has no sparse vector {self.vector_name!r} (it has {sorted(sparse)}); "
                "pass vector_name=… or export to a new collection"
            )
        has_idf = _is_idf(sparse[self.vector_name])
        if idf is not None and has_idf != idf:
            raise ValueError(
                f"{self.describe()}: sparse vector {self.vector_name!r} has modifier "
                f"{'IDF' if has_idf else 'none'} but idf={idf} was asked; IDF is fixed at creation"
            )
        if dense_size:
            dense = params.vectors if isinstance(params.vectors, Mapping) else {}
            if self.dense_name not in dense:
                raise ValueError(
                    f"{self.describe()} has no dense vector {self.dense_name!r} (it has {sorted(dense)}); "
                    "hybrid search and server-side re-ranking need an export with dense=True"
                )
            if dense[self.dense_name].size != dense_size:
                raise ValueError(
                    f"{self.describe()}: dense vector {self.dense_name!r} has size {dense[self.dense_name].size}, "
                    f"expected {dense_size}"
                )
        if storage is not None:
            self.check_storage(storage)

    def has_dense(self, size: int) -> bool:
        """Whether the collection has the dense vector ``dense_name`` of this size."""
        params = self._info().config.params
        dense = params.vectors if isinstance(params.vectors, Mapping) else {}
        return self.dense_name in dense and dense[self.dense_name].size == size

    def storage(self) -> dict[str, Any]:
        """The collection's storage options (see :mod:`.layout`)."""
        config = self._info().config
        params = config.params
        dense = params.vectors if isinstance(params.vectors, Mapping) else {}
        return found_client((params.sparse_vectors or {}).get(self.vector_name),
                            dense.get(self.dense_name) if self.dense_name else None,
                            getattr(config, "quantization_config", None))

    def dense_graph(self) -> bool | None:
        """Whether Qdrant builds an HNSW graph over the dense vector (None without one)."""
        config = self._info().config
        dense = config.params.vectors if isinstance(config.params.vectors, Mapping) else {}
        found = graph_client(dense.get(self.dense_name) if self.dense_name else None,
                             getattr(config, "hnsw_config", None))
        return found.get("dense_hnsw")

    def check_storage(self, storage: Storage) -> None:
        graph = self.dense_graph()
        check_storage(storage, {**self.storage(), **({} if graph is None else {"dense_hnsw": graph})},
                      self.describe())

    def sparse_has_idf(self) -> bool:
        return _is_idf((self._info().config.params.sparse_vectors or {}).get(self.vector_name))

    def read_metadata(self) -> dict | None:
        meta = getattr(self._info().config, "metadata", None) or {}
        return meta.get(METADATA_KEY)

    # -- points
    def count(self) -> int:
        return int(self.client.count(self.name, exact=True).count)

    def existing(self, ids: list[int]) -> set[int]:
        records = self.client.retrieve(self.name, ids=ids, with_payload=False, with_vectors=False)
        return {int(r.id) for r in records}

    def upsert(self, ids: list[int], sparse: list[SparseRow], dense: list[list[float]] | None,
               payloads: list[dict] | None) -> None:
        models = qdrant_models()
        points = []
        for j, (pid, (indices, values)) in enumerate(zip(ids, sparse)):
            vector: dict[str, Any] = {self.vector_name: models.SparseVector(indices=indices, values=values)}
            if dense is not None:
                vector[self.dense_name] = dense[j]
            points.append(models.PointStruct(id=pid, vector=vector,
                                             payload=payloads[j] if payloads is not None else None))
        self.client.upsert(self.name, points=points, wait=self.wait)

    def flush(self) -> None:
        """Nothing to do: the server persists what it acknowledged."""

    def query(self, sparse: list[SparseRow | None], dense: np.ndarray | None,
              plan: QueryPlan) -> list[list[tuple[Any, float]]]:
        """(id, score) hits per query as ``plan`` says: sparse, or RRF of sparse and dense (hybrid),
        then optionally re-scored by the dense vector on the server (one Query API request per query)."""
        models = qdrant_models()
        requests, slots = [], []
        for qi, sv in enumerate(sparse):
            sq = models.SparseVector(indices=sv[0], values=sv[1]) if sv is not None else None
            if plan.hybrid:
                prefetch = [models.Prefetch(query=dense[qi].tolist(), using=self.dense_name, limit=plan.candidates)]
                if sq is not None:
                    prefetch.insert(0, models.Prefetch(query=sq, using=self.vector_name, limit=plan.candidates))
                stage: dict[str, Any] = {"prefetch": prefetch, "query": models.RrfQuery(rrf=models.Rrf(k=plan.rrf_k))}
            elif sq is None:
                continue
            else:
                stage = {"query": sq, "using": self.vector_name}
            if plan.server_rerank:
                params = None
                if plan.rescore is not None or plan.oversampling is not None:
                    params = models.SearchParams(quantization=models.QuantizationSearchParams(
                        rescore=plan.rescore, oversampling=plan.oversampling))
                req = models.QueryRequest(prefetch=models.Prefetch(**stage, limit=plan.candidates),
                                          query=dense[qi].tolist(), using=self.dense_name, params=params,
                                          limit=plan.limit, with_payload=False, with_vector=False)
            else:
                req = models.QueryRequest(**stage, limit=plan.candidates, with_payload=False, with_vector=False)
            requests.append(req)
            slots.append(qi)
        out: list[list[tuple[Any, float]]] = [[] for _ in sparse]
        if requests:
            responses = self.client.query_batch_points(self.name, requests=requests)
            for qi, resp in zip(slots, responses):
                out[qi] = [(p.id, p.score) for p in resp.points]
        return out

    def payloads(self, ids: list[int], fields: list[str]) -> dict[int, dict]:
        """Payload ``fields`` of the given points (missing points are left out)."""
        records = self.client.retrieve(self.name, ids=ids, with_payload=fields, with_vectors=False)
        return {int(r.id): dict(r.payload or {}) for r in records}
