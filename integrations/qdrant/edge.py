"""Qdrant's engine in-process via qdrant-edge-py: :class:`EdgeCollection` and its export/search target.

qdrant-edge is pinned to ``EDGE_VERSION`` (its API is beta) and validates nothing,
so the checks in :mod:`.validation` are its only protection.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from csr_index.validation import check_positive

from ._deps import qdrant_edge
from .metadata import DEFAULT_DENSE_VECTOR_NAME, DEFAULT_VECTOR_NAME, check_export_metadata
from .validation import SparseRow, check_name

if TYPE_CHECKING:
    from csr_index.index import CSRIndex

__all__ = ["EdgeCollection"]

log = logging.getLogger(__name__)

EDGE_METADATA_FILE = "csr_index.json"


def _edge_call(what: str, fn: Callable[[], Any]) -> Any:
    """Run a qdrant-edge call; turn a Rust panic (a BaseException) into a RuntimeError."""
    try:
        return fn()
    except Exception:
        raise
    except BaseException as exc:  # pyo3 PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise RuntimeError(
            f"qdrant-edge panicked during {what}: {exc}. The shard may be unusable; close it and "
            "reopen it from disk (its WAL replays the completed updates)."
        ) from exc


def _count(shard: Any) -> int:
    qe = qdrant_edge()
    return int(_edge_call("count", lambda: shard.count(qe.CountRequest(exact=True))))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _is_idf(entry: Mapping | None) -> bool:
    return str((entry or {}).get("modifier", "")).lower() == "idf"


class EdgeCollection:
    """Qdrant's engine in-process (qdrant-edge-py): one shard in directory ``path``, laid out for CSR codes.

    Opens the shard if ``path`` holds one, else creates it (unless ``create=False``)
    with a sparse vector ``vector_name`` (IDF modifier when ``idf``) and, when
    ``dense_size`` is given, a dense vector ``dense_vector_name`` (dot product) for
    hybrid search. ``idf``/``dense_size`` left as None accept whatever an existing
    shard has. Updates go through the shard's write-ahead log, so a process killed
    mid-export loses nothing that was acknowledged; ``export`` flushes at the end.
    The shard is locked while open: close it (or use ``with``) before another
    process opens it.
    """

    CONFIG_FILE = "edge_config.json"  # written by qdrant-edge itself; read for layout checks only

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        vector_name: str = DEFAULT_VECTOR_NAME,
        idf: bool | None = None,
        dense_size: int | None = None,
        dense_vector_name: str = DEFAULT_DENSE_VECTOR_NAME,
        create: bool = True,
        max_search_threads: int | None = None,
    ) -> None:
        qe = qdrant_edge()
        self.path = Path(path)
        self._layout: dict | None = None
        self._metadata: dict | None = None
        self.vector_name = check_name(vector_name, "vector_name")
        self.dense_vector_name = check_name(dense_vector_name, "dense_vector_name")
        if dense_size is not None:
            dense_size = check_positive(dense_size, "dense_size")
        if (self.path / self.CONFIG_FILE).exists() or (self.path / "segments").exists():
            try:
                self.shard = _edge_call("load", lambda: qe.EdgeShard.load(str(self.path)))
            except Exception as exc:
                hint = " (is it open in another process?)" if "WouldBlock" in str(exc) else ""
                raise RuntimeError(f"cannot open the qdrant-edge shard at {self.path}{hint}: {exc}") from exc
            try:
                self._check_layout(idf, dense_size)
            except Exception:
                self.shard.close()
                raise
            log.info("opened qdrant-edge shard %s (%d points)", self.path, self.count())
        else:
            if not create:
                raise FileNotFoundError(f"no qdrant-edge shard at {self.path} (create=False)")
            sparse = {self.vector_name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if idf else None)}
            vectors = ({self.dense_vector_name: qe.EdgeVectorParams(dense_size, qe.Distance.Dot)}
                       if dense_size else None)
            config = qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse, max_search_threads=max_search_threads)
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                self.shard = _edge_call("create", lambda: qe.EdgeShard.create(str(self.path), config))
            except Exception as exc:
                raise RuntimeError(f"cannot create a qdrant-edge shard at {self.path}: {exc}") from exc
            log.info("created qdrant-edge shard %s", self.path)
        self._closed = False

    @classmethod
    def for_index(
        cls, path: str | os.PathLike, index: "CSRIndex", *, dense: bool = False, idf: bool = False, **kwargs: Any
    ) -> "EdgeCollection":
        """A shard laid out for ``index``: dense vectors of size ``index.d`` when ``dense``."""
        return cls(path, idf=idf, dense_size=index.d if dense else None, **kwargs)

    def layout(self) -> dict | None:
        """The shard's vector layout as qdrant-edge stores it (None if unreadable); fixed while open."""
        if self._layout is None:
            self._layout = _read_json(self.path / self.CONFIG_FILE)
        return self._layout

    def _check_layout(self, idf: bool | None, dense_size: int | None) -> None:
        layout = self.layout()
        if layout is None:
            log.debug("no readable %s in %s; skipping layout checks", self.CONFIG_FILE, self.path)
            return
        sparse = layout.get("sparse_vectors") or {}
        if self.vector_name not in sparse:
            raise ValueError(f"qdrant-edge shard {self.path} has no sparse vector {self.vector_name!r} "
                             f"(it has {sorted(sparse)})")
        has_idf = _is_idf(sparse[self.vector_name])
        if idf is not None and has_idf != idf:
            raise ValueError(f"qdrant-edge shard {self.path}: sparse vector {self.vector_name!r} has modifier "
                             f"{'IDF' if has_idf else 'none'} but idf={idf} was asked; IDF is fixed at creation")
        if dense_size is not None:
            dense = layout.get("vectors") or {}
            if self.dense_vector_name not in dense:
                raise ValueError(f"qdrant-edge shard {self.path} has no dense vector {self.dense_vector_name!r} "
                                 f"(it has {sorted(dense)}); create the shard with dense_size=…")
            size = dense[self.dense_vector_name].get("size")
            if size != dense_size:
                raise ValueError(f"qdrant-edge shard {self.path}: dense vector {self.dense_vector_name!r} has "
                                 f"size {size}, expected {dense_size}")

    @property
    def has_idf(self) -> bool:
        return _is_idf(((self.layout() or {}).get("sparse_vectors") or {}).get(self.vector_name))

    @property
    def has_dense(self) -> bool:
        return self.dense_vector_name in ((self.layout() or {}).get("vectors") or {})

    def metadata(self) -> dict | None:
        """The csr_index metadata written by the first export (None if none), from ``csr_index.json``."""
        if self._metadata is None:
            self._metadata = _read_json(self.path / EDGE_METADATA_FILE) or {}
        return self._metadata or None

    def write_metadata(self, meta: dict) -> None:
        tmp = self.path / (EDGE_METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, self.path / EDGE_METADATA_FILE)
        self._metadata = dict(meta)

    def count(self) -> int:
        return _count(self.shard)

    def flush(self) -> None:
        _edge_call("flush", self.shard.flush)

    def optimize(self) -> bool:
        """Merge and index segments (Qdrant's optimizers, in-process); True if anything changed."""
        return bool(_edge_call("optimize", self.shard.optimize))

    def close(self) -> None:
        if not self._closed:
            self.flush()
            _edge_call("close", self.shard.close)
            self._closed = True

    def __enter__(self) -> "EdgeCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeCollection({str(self.path)!r}, vector_name={self.vector_name!r})"


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
                create: Mapping[str, Any]) -> None:
        if recreate:
            raise ValueError("recreate=True does not apply to a qdrant-edge shard: delete its directory instead")
        if self.edge is None:
            if metadata:
                log.debug("bare EdgeShard: no place for csr_index metadata; use EdgeCollection to keep it")
            return
        self.edge._check_layout(idf, dense_size)
        if metadata:
            found = self.edge.metadata()
            check_export_metadata(found, metadata, self.describe(), "export to a new directory")
            if not found:
                self.edge.write_metadata(metadata)

    def check_layout(self, *, idf: bool | None, dense_size: int | None) -> None:
        if self.edge is not None:
            self.edge._check_layout(idf, dense_size)

    def sparse_has_idf(self) -> bool:
        return self.edge.has_idf if self.edge is not None else False

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

    def query(self, sparse: list[SparseRow | None], dense: np.ndarray | None, limit: int,
              rrf_k: int) -> list[list[tuple[Any, float]]]:
        """(id, score) hits per query; sparse only, or RRF of sparse and dense when ``dense`` is given."""
        qe = qdrant_edge()
        requests, slots = [], []
        for qi, sv in enumerate(sparse):
            sq = (qe.Query.Nearest(qe.SparseVector(sv[0], sv[1]), using=self.vector_name)
                  if sv is not None else None)
            if dense is None:
                if sq is None:
                    continue
                req = qe.QueryRequest(limit=limit, query=sq, with_payload=False, with_vector=False)
            else:
                prefetches = [qe.Prefetch(limit=limit, query=qe.Query.Nearest(dense[qi].tolist(),
                                                                               using=self.dense_name))]
                if sq is not None:
                    prefetches.insert(0, qe.Prefetch(limit=limit, query=sq))
                req = qe.QueryRequest(limit=limit, query=qe.Fusion.Rrf(k=rrf_k), prefetches=prefetches,
                                      with_payload=False, with_vector=False)
            requests.append(req)
            slots.append(qi)
        out: list[list[tuple[Any, float]]] = [[] for _ in sparse]
        if requests:
            results = _edge_call("query", lambda: self.shard.query_batch(qe.QueryBatchRequest(requests)))
            for qi, points in zip(slots, results):
                out[qi] = [(p.id, p.score) for p in points]
        return out
