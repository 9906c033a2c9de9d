"""How a collection stores its vectors: value datatypes of the sparse codes and of the dense
vectors, and Qdrant's quantization of the dense vectors. Fixed when the collection is created;
an export or search that asks for something else is refused.

* ``sparse_datatype``: ``"float32"`` (Qdrant's default), ``"float16"`` or ``"uint8"`` (Qdrant
  quantizes each posting list to bytes). Applied by Qdrant when it *indexes* a segment (the
  optimizer builds the immutable sparse index); small, never-indexed segments keep float32.
* ``dense_datatype``: ``"float32"`` (default) or ``"float16"`` for the dense vectors that
  server-side re-ranking scores.
* ``quantization``: ``"int8"`` (scalar, quantile 0.99) or ``"binary"`` (1 bit per dimension),
  kept in RAM; with ``dense_on_disk=True`` the originals are memory-mapped from disk and only the
  quantized vectors stay resident. Search chooses whether the originals re-score (``rescore``).
* ``dense_hnsw``: whether Qdrant builds its HNSW graph over the dense vectors. The default
  (``None`` or ``False`` when creating) sets the dense vector's own ``hnsw_config`` to ``m = 0``:
  no graph, because server-side re-ranking scores the sparse shortlist's points directly and
  never walks a graph, while building one is most of the indexing time (pypi 20k, 2 cores:
  optimize 6.2 s with the graph, 0.5 s without). ``True`` keeps the collection's graph settings,
  for hybrid search (whose dense prefetch is otherwise an exact full scan) or dense-only queries.
  A server takes ``HnswConfigDiff(m=0)`` in the vector's ``VectorParams``; qdrant-edge wants a
  whole ``HnswIndexConfig``, filled with Qdrant's defaults (``EDGE_HNSW_DEFAULTS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

SPARSE_DATATYPES = ("float32", "float16", "uint8")
DENSE_DATATYPES = ("float32", "float16")
QUANTIZATIONS = ("int8", "binary")
INT8_QUANTILE = 0.99
EDGE_HNSW_DEFAULTS = {"ef_construct": 100, "full_scan_threshold": 10_000}
"""Qdrant's defaults for the HnswIndexConfig fields qdrant-edge requires (a server takes a partial diff)."""


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str | None:
    if value is None:
        return None
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed} or None, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Storage:
    """Storage options of a collection; None = Qdrant's default when creating (``dense_hnsw``: no
    graph), anything when checking."""

    sparse_datatype: str | None = None
    dense_datatype: str | None = None
    quantization: str | None = None
    dense_on_disk: bool | None = None
    dense_hnsw: bool | None = None

    def __post_init__(self) -> None:
        _choice(self.sparse_datatype, SPARSE_DATATYPES, "sparse_datatype")
        _choice(self.dense_datatype, DENSE_DATATYPES, "dense_datatype")
        _choice(self.quantization, QUANTIZATIONS, "quantization")
        for name in ("dense_on_disk", "dense_hnsw"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool or None, got {value!r}")

    @property
    def dense_options(self) -> bool:
        """Whether any option concerns the dense vectors."""
        return any(v is not None for v in (self.dense_datatype, self.quantization, self.dense_on_disk,
                                           self.dense_hnsw))

    # ---- qdrant-client models
    def client_sparse(self, models: Any, *, idf: bool, on_disk: bool | None) -> Any:
        datatype = models.Datatype(self.sparse_datatype) if self.sparse_datatype else None
        return models.SparseVectorParams(index=models.SparseIndexParams(on_disk=on_disk, datatype=datatype),
                                         modifier=models.Modifier.IDF if idf else None)

    def client_dense(self, models: Any, size: int) -> Any:
        quant = None
        if self.quantization == "int8":
            quant = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=INT8_QUANTILE, always_ram=True))
        elif self.quantization == "binary":
            quant = models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
        return models.VectorParams(size=size, distance=models.Distance.DOT, on_disk=self.dense_on_disk,
                                   datatype=models.Datatype(self.dense_datatype) if self.dense_datatype else None,
                                   quantization_config=quant,
                                   hnsw_config=None if self.dense_hnsw else models.HnswConfigDiff(m=0))

    # ---- qdrant-edge objects
    def edge_sparse(self, qe: Any, *, idf: bool | None) -> Any:
        datatype = _edge_datatype(qe, self.sparse_datatype)
        return qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if idf else None, datatype=datatype)

    def edge_dense(self, qe: Any, size: int) -> Any:
        quant = None
        if self.quantization == "int8":
            quant = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=INT8_QUANTILE, always_ram=True)
        elif self.quantization == "binary":
            quant = qe.BinaryQuantizationConfig(always_ram=True)
        hnsw = None if self.dense_hnsw else qe.HnswIndexConfig(m=0, **EDGE_HNSW_DEFAULTS)
        return qe.EdgeVectorParams(size, qe.Distance.Dot, on_disk=self.dense_on_disk,
                                   datatype=_edge_datatype(qe, self.dense_datatype), quantization_config=quant,
                                   hnsw_config=hnsw)


def _edge_datatype(qe: Any, name: str | None) -> Any:
    return None if name is None else {"float32": qe.VectorStorageDatatype.Float32,
                                      "float16": qe.VectorStorageDatatype.Float16,
                                      "uint8": qe.VectorStorageDatatype.Uint8}[name]


def _quant_name(config: Any) -> str | None:
    """'int8' / 'binary' / 'product' / other name of a quantization config (model or JSON dict), None if none."""
    if config is None:
        return None
    keys = set(config) if isinstance(config, Mapping) else {k for k in ("scalar", "binary", "product", "turbo")
                                                            if getattr(config, k, None) is not None}
    if "scalar" in keys:
        return "int8"
    return next(iter(sorted(keys)), None)


def _value(x: Any) -> str | None:
    return None if x is None else str(getattr(x, "value", x)).lower()


def _field(config: Any, name: str) -> Any:
    """``config.name`` of a model, ``config[name]`` of a JSON dict, None if either is missing."""
    if config is None:
        return None
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def _has_graph(vector_hnsw: Any, collection_hnsw: Any) -> bool:
    """Whether Qdrant builds an HNSW graph for a dense vector: its own ``m``, else the collection's,
    else Qdrant's default (16). ``m = 0`` means no graph."""
    m = _field(vector_hnsw, "m")
    if m is None:
        m = _field(collection_hnsw, "m")
    return m is None or int(m) > 0


def graph_client(dense: Any, collection_hnsw: Any) -> dict[str, bool]:
    """``{"dense_hnsw": ...}`` of a qdrant-client dense ``VectorParams`` (empty without one)."""
    return {} if dense is None else {"dense_hnsw": _has_graph(getattr(dense, "hnsw_config", None), collection_hnsw)}


def graph_edge(layout: Mapping[str, Any], dense_name: str | None) -> dict[str, bool]:
    """``{"dense_hnsw": ...}`` of a qdrant-edge shard's dense vector (empty without one)."""
    dense = (layout.get("vectors") or {}).get(dense_name) if dense_name else None
    return {} if dense is None else {"dense_hnsw": _has_graph(dense.get("hnsw_config"), layout.get("hnsw_config"))}


def found_client(sparse: Any, dense: Any, collection_quant: Any) -> dict[str, Any]:
    """Storage options of a qdrant-client collection (``SparseVectorParams``, ``VectorParams`` or None)."""
    index = getattr(sparse, "index", None)
    found: dict[str, Any] = {"sparse_datatype": _value(getattr(index, "datatype", None)) or "float32"}
    if dense is not None:
        found["dense_datatype"] = _value(getattr(dense, "datatype", None)) or "float32"
        found["quantization"] = _quant_name(getattr(dense, "quantization_config", None) or collection_quant)
        found["dense_on_disk"] = bool(getattr(dense, "on_disk", None))
    return found


def found_edge(layout: Mapping[str, Any], sparse_name: str, dense_name: str | None) -> dict[str, Any]:
    """Storage options of a qdrant-edge shard, from the ``edge_config.json`` it writes."""
    sparse = (layout.get("sparse_vectors") or {}).get(sparse_name) or {}
    found: dict[str, Any] = {"sparse_datatype": _value(sparse.get("datatype")) or "float32"}
    dense = (layout.get("vectors") or {}).get(dense_name) if dense_name else None
    if dense is not None:
        found["dense_datatype"] = _value(dense.get("datatype")) or "float32"
        found["quantization"] = _quant_name(dense.get("quantization_config") or layout.get("quantization_config"))
        found["dense_on_disk"] = bool(dense.get("on_disk"))
    return found


def check_storage(wanted: Storage | None, found: Mapping[str, Any], where: str) -> None:
    """ValueError when an option asked for explicitly differs from what the collection has."""
    if wanted is None:
        return
    for f in fields(Storage):
        value = getattr(wanted, f.name)
        if value is None or f.name not in found:
            continue
        have = found[f.name]
        if f.name == "sparse_datatype" or f.name == "dense_datatype":
            have = have or "float32"
        if have != value:
            raise ValueError(
                f"{where} was created with {f.name}={have!r} but {value!r} was asked; storage options are "
                "fixed at creation: export to a new collection (or recreate it)"
            )
