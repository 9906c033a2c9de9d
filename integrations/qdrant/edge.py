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
from typing import Any

from csr_index.validation import check_positive

from ._deps import qdrant_edge
from .layout import Storage, check_storage, found_edge, graph_edge
from .metadata import DEFAULT_DENSE_VECTOR_NAME, DEFAULT_VECTOR_NAME
from .validation import Model, check_name, encoder_of

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
    hybrid search and server-side re-ranking. ``sparse_datatype``, ``dense_datatype``,
    ``quantization``, ``dense_on_disk`` and ``dense_hnsw`` set how vectors are stored and indexed
    (see :mod:`.layout`; by default the dense vector gets no HNSW graph: it only re-ranks);
    ``indexing_threshold`` (KB of vectors per segment, Qdrant's optimizer setting) is when
    ``optimize()`` turns a segment into an indexed one, which is where datatypes and
    quantization take effect. Options left as None accept whatever an existing shard has. Updates go through the shard's write-ahead log, so a process killed
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
        sparse_datatype: str | None = None,
        dense_datatype: str | None = None,
        quantization: str | None = None,
        dense_on_disk: bool | None = None,
        dense_hnsw: bool | None = None,
        indexing_threshold: int | None = None,
    ) -> None:
        qe = qdrant_edge()
        self.path = Path(path)
        storage = Storage(sparse_datatype, dense_datatype, quantization, dense_on_disk, dense_hnsw)
        if storage.dense_options and dense_size is None and not (self.path / self.CONFIG_FILE).exists():
            raise ValueError("dense_datatype, quantization, dense_on_disk and dense_hnsw need dense vectors: "
                             "pass dense_size")
        if indexing_threshold is not None:
            indexing_threshold = check_positive(indexing_threshold, "indexing_threshold")
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
                self._check_layout(idf, dense_size, storage)
            except Exception:
                self.shard.close()
                raise
            log.info("opened qdrant-edge shard %s (%d points)", self.path, self.count())
        else:
            if not create:
                raise FileNotFoundError(f"no qdrant-edge shard at {self.path} (create=False)")
            sparse = {self.vector_name: storage.edge_sparse(qe, idf=idf)}
            vectors = {self.dense_vector_name: storage.edge_dense(qe, dense_size)} if dense_size else None
            optimizers = (qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold)
                          if indexing_threshold is not None else None)
            config = qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse, optimizers=optimizers,
                                   max_search_threads=max_search_threads)
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                self.shard = _edge_call("create", lambda: qe.EdgeShard.create(str(self.path), config))
            except Exception as exc:
                raise RuntimeError(f"cannot create a qdrant-edge shard at {self.path}: {exc}") from exc
            log.info("created qdrant-edge shard %s", self.path)
        self._closed = False

    @classmethod
    def for_index(
        cls, path: str | os.PathLike, model: Model, *, dense: bool = False, idf: bool = False, **kwargs: Any
    ) -> "EdgeCollection":
        """A shard laid out for a CSRIndex or CSREncoder: dense vectors of size ``d`` when ``dense``
        (``kwargs``: the other options of :class:`EdgeCollection`)."""
        return cls(path, idf=idf, dense_size=encoder_of(model).d if dense else None, **kwargs)

    def layout(self) -> dict | None:
        """The shard's vector layout as qdrant-edge stores it (None if unreadable); fixed while open."""
        if self._layout is None:
            self._layout = _read_json(self.path / self.CONFIG_FILE)
        return self._layout

    def storage(self) -> dict[str, Any]:
        """The shard's storage options (see :mod:`.layout`), from its config file."""
        return found_edge(self.layout() or {}, self.vector_name, self.dense_vector_name)

    def dense_graph(self) -> bool | None:
        """Whether Qdrant builds an HNSW graph over the dense vector (None without one); see :mod:`.layout`."""
        return graph_edge(self.layout() or {}, self.dense_vector_name).get("dense_hnsw")

    def _check_layout(self, idf: bool | None, dense_size: int | None, storage: Storage | None = None) -> None:
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
        check_storage(storage, {**self.storage(), **graph_edge(layout, self.dense_vector_name)},
                      f"qdrant-edge shard {self.path}")

    @property
    def has_idf(self) -> bool:
        return _is_idf(((self.layout() or {}).get("sparse_vectors") or {}).get(self.vector_name))

    @property
    def has_dense(self) -> bool:
        return self.dense_vector_name in ((self.layout() or {}).get("vectors") or {})

    def dense_size(self) -> int | None:
        """Size of the dense vector (None without one)."""
        entry = ((self.layout() or {}).get("vectors") or {}).get(self.dense_vector_name)
        return int(entry["size"]) if entry and "size" in entry else None

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
