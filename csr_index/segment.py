"""Segment: an immutable block of stored rows — ids, codes, reconstruction norms, originals, keys.

An index is a list of segments (see :mod:`csr_index.store`). A segment never changes
after it is built, so a search can use it while a writer adds or merges others, and
saving can reuse its files. It builds its search engine lazily (one per engine
setting, under a lock) and caches the per-doc scales of each scoring mode. It owns its
Arrow form (:meth:`Segment.tables`, :meth:`Segment.from_tables`); :mod:`csr_index.storage`
writes and memory-maps the files.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .clusters import CLUSTER_MIN_ROWS, Clusters, cluster_order
from .codes import SparseCodes, index_dtype
from .engines import SearchEngine, make_engine
from .errors import CorruptIndexError
from .rerank import dequantize_int8, quantize_int8

__all__ = ["Segment", "EngineSpec", "fixed_size_column", "VECTORS_DTYPES", "store_originals"]

VECTORS_DTYPES = ("float16", "int8")
"""How a segment may hold the originals: float16, or int8 with one float32 scale per row."""

EngineSpec = tuple[str, tuple[tuple[str, Any], ...]]
"""An engine name and its options, hashable: ``("pruned", (("candidates", 500),))``."""


class Segment:
    """``n`` stored rows: ``ids`` int64 (n,), ``codes`` (n, k_doc), ``norms`` float32 (n,) — the
    L2 norm of each code's reconstruction —, optional originals (n, d), float16 or int8 (then with
    ``scales`` float32 (n,): row i is ``vectors[i] * scales[i]``, see :func:`store_originals`),
    and optional string keys."""

    def __init__(
        self,
        ids: np.ndarray,
        codes: SparseCodes,
        norms: np.ndarray,
        vectors: np.ndarray | None = None,
        keys: pa.Array | None = None,
        name: str | None = None,
        files: dict[str, Any] | None = None,
        scales: np.ndarray | None = None,
        clusters: Clusters | None = None,
    ) -> None:
        n = len(ids)
        if codes.n != n or len(norms) != n or (vectors is not None and len(vectors) != n) or (
                keys is not None and len(keys) != n) or (scales is not None and len(scales) != n):
            raise ValueError("a segment's columns must all have one row per id")
        if (vectors is not None and vectors.dtype == np.int8) != (scales is not None):
            raise ValueError("int8 originals need one scale per row (and only int8 originals have scales)")
        self.ids, self.codes, self.norms, self.vectors, self.keys = ids, codes, norms, vectors, keys
        if clusters is not None and (vectors is None or clusters.start[-1] != n):
            raise ValueError("clusters need the originals and must cover every row")
        self.scales, self.clusters = scales, clusters
        """``clusters``: the row ranges of a segment ordered by cluster at merge (see :mod:`csr_index.clusters`)."""
        self.name = name or uuid.uuid4().hex[:12]
        self.files: dict[str, Any] = dict(files or {})
        """Where the segment is saved: role -> {name, bytes, sha256} (empty until saved)."""
        # id lookups by binary search; sequential ids (the usual case) need no sorted copy
        self._order = None if n < 2 or bool((np.diff(ids) > 0).all()) else np.argsort(ids, kind="stable")
        self._sorted = ids if self._order is None else ids[self._order]
        self._lock = threading.Lock()
        self._engine: tuple[EngineSpec, SearchEngine] | None = None
        self._scales: dict[str, np.ndarray | None] = {}

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles drop the lock and the engine
        return {**self.__dict__, "_lock": None, "_engine": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def originals(self) -> np.ndarray | None:
        """The stored originals as numbers: float16 as held, or int8 rows dequantised to float32 (a copy)."""
        return self.vectors if self.scales is None else dequantize_int8(self.vectors, self.scales)

    def __repr__(self) -> str:
        return f"Segment({self.name}, n={self.n}, saved={bool(self.files)})"

    # ---------------------------------------------------------------- lookups
    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (int64 array), -1 where this segment does not hold it."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.n == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, ids), self.n - 1)
        rows = pos if self._order is None else self._order[pos]
        return np.where(self._sorted[pos] == ids, rows, -1)

    def keys_at(self, rows: np.ndarray) -> list[str | None]:
        """The keys of ``rows`` (None where there is none)."""
        if self.keys is None:
            return [None] * len(rows)
        return self.keys.take(pa.array(rows, type=pa.int64())).to_pylist()

    # ----------------------------------------------------------- derived data
    def engine(self, spec: EngineSpec) -> SearchEngine:
        """The search engine over this segment's codes for ``spec``, built on first use."""
        with self._lock:
            if self._engine is None or self._engine[0] != spec:
                starts = None if self.clusters is None else self.clusters.start
                self._engine = (spec, make_engine(spec[0], self.codes, clusters=starts, **dict(spec[1])))
            return self._engine[1]

    def scale(self, mode: str, compute) -> np.ndarray | None:
        """Per-doc scale of scoring ``mode``, ``compute(self)`` on first use."""
        with self._lock:
            if mode not in self._scales:
                self._scales[mode] = compute(self)
            return self._scales[mode]

    def nbytes(self, spec: EngineSpec) -> dict[str, int]:
        """Bytes held per part: codes, ids, norms, vectors (with int8 originals' scales), keys, and the
        structures of the search engine ``spec`` (posting lists, copies of the codes), which is built
        now if no search has yet."""
        return {
            "codes": int(self.codes.indices.nbytes + self.codes.values.nbytes),
            "ids": int(self.ids.nbytes + (0 if self._order is None else self._order.nbytes + self._sorted.nbytes)),
            "norms": int(self.norms.nbytes),
            "vectors": (int(self.vectors.nbytes) if self.vectors is not None else 0)
            + (int(self.scales.nbytes) if self.scales is not None else 0),
            "keys": int(self.keys.nbytes) if self.keys is not None else 0,
            "postings": int(self.engine(spec).nbytes),
            "clusters": self.clusters.nbytes if self.clusters is not None else 0,
        }

    # ------------------------------------------------------------ persistence
    def roles(self) -> tuple[str, ...]:
        return ("codes", "vectors") if self.vectors is not None else ("codes",)

    def tables(self) -> dict[str, pa.Table]:
        """The segment as Arrow tables, one per file role."""
        k = self.codes.k
        columns = {
            "id": pa.array(self.ids, type=pa.int64()),
            "indices": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(self.codes.indices).ravel()), k),
            "values": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(self.codes.values).ravel()), k),
            "norm": pa.array(self.norms, type=pa.float32()),
        }
        if self.keys is not None:
            columns["key"] = self.keys
        if self.clusters is not None:
            columns["cluster"] = pa.array(self.clusters.labels(), type=pa.int32())
        out = {"codes": pa.table(columns)}
        if self.vectors is not None:
            dtype = np.int8 if self.scales is not None else np.float16
            flat = pa.array(np.ascontiguousarray(self.vectors, dtype=dtype).ravel())
            vectors = {"vector": pa.FixedSizeListArray.from_arrays(flat, self.vectors.shape[1])}
            if self.scales is not None:
                vectors["scale"] = pa.array(np.asarray(self.scales, dtype=np.float32), type=pa.float32())
            out["vectors"] = pa.table(vectors)
        return out

    @classmethod
    def from_tables(cls, name: str, tables: dict[str, pa.Table], h: int, d: int, settings: dict[str, Any],
                    files: dict[str, Any], root: Path) -> "Segment":
        """A segment from its (memory-mapped) tables, as :meth:`tables` writes them, of codes of width
        ``h`` and originals of ``d`` dimensions, under the index ``settings`` (k_doc, values_dtype,
        store_vectors, vectors_dtype: float16 when absent, as saves before it was a setting hold);
        every size and value range checked (CorruptIndexError naming ``root``)."""
        codes = tables["codes"]
        n, k_doc = codes.num_rows, int(settings["k_doc"])
        indices = fixed_size_column(codes, "indices", index_dtype(h))
        values = fixed_size_column(codes, "values", np.dtype(settings["values_dtype"]))
        if indices.shape != (n, k_doc) or values.shape != (n, k_doc):
            raise CorruptIndexError(f"{root}: segment {name} codes have shape {indices.shape}, expected ({n}, {k_doc})")
        if n and int(indices.max()) >= h:
            raise CorruptIndexError(f"{root}: a latent index exceeds h={h}")
        if not np.isfinite(values).all() or (values < 0).any():
            raise CorruptIndexError(f"{root}: code values must be finite and non-negative")
        ids = codes.column("id").to_numpy()
        if ids.dtype != np.int64 or (n and ids.min() < 0) or len(np.unique(ids)) != n:
            raise CorruptIndexError(f"{root}: segment {name} ids must be unique non-negative int64")
        norms = codes.column("norm").to_numpy()
        keys = codes.column("key").combine_chunks() if "key" in codes.column_names else None
        vectors, scales = None, None
        if settings.get("store_vectors"):
            if "vectors" not in tables:
                raise CorruptIndexError(f"{root}: segment {name} has no stored vectors")
            where = f"{root}: segment {name}"
            vectors, scales = _read_originals(tables["vectors"], settings.get("vectors_dtype", "float16"), where)
            if vectors.shape != (n, d):
                raise CorruptIndexError(f"{where} vectors have shape {vectors.shape}, expected ({n}, {d})")
            if scales is not None and (scales.shape != (n,) or not np.isfinite(scales).all() or (scales < 0).any()):
                raise CorruptIndexError(f"{where} vector scales must be {n} finite non-negative values "
                                        f"(got {scales.shape[0]}, min {scales.min() if len(scales) else None})")
        clusters = None
        if "cluster" in codes.column_names and vectors is not None:
            labels = codes.column("cluster").to_numpy()
            clusters = Clusters.from_labels(labels, vectors, scales, f"{root}: segment {name}")
        return cls(ids, SparseCodes(indices, values, h), norms, vectors, keys, name=name, files=files, scales=scales,
                   clusters=clusters)

    @classmethod
    def merge(cls, parts: list["Segment"], deleted: list[np.ndarray | None], cluster_rows: int | None = None
              ) -> "Segment":
        """One new segment holding the live rows of ``parts`` (rows where ``deleted`` is set are
        dropped); with ``cluster_rows``, originals and :data:`~csr_index.clusters.CLUSTER_MIN_ROWS`
        rows or more, its rows are ordered by cluster, about ``cluster_rows`` each
        (:func:`~csr_index.clusters.cluster_order`)."""
        keep = [np.flatnonzero(m == 0) if m is not None else slice(None) for m in deleted]
        codes = SparseCodes(np.concatenate([p.codes.indices[r] for p, r in zip(parts, keep)]),
                            np.concatenate([p.codes.values[r] for p, r in zip(parts, keep)]), parts[0].codes.h)
        vectors, scales = None, None
        if parts[0].vectors is not None:
            vectors = np.concatenate([p.vectors[r] for p, r in zip(parts, keep)])
        if parts[0].scales is not None:
            scales = np.concatenate([p.scales[r] for p, r in zip(parts, keep)])
        keys = None
        if any(p.keys is not None for p in parts):
            keys = pa.concat_arrays([
                (p.keys if p.keys is not None else pa.nulls(p.n, pa.string())).take(
                    pa.array(np.arange(p.n)[r], type=pa.int64())) for p, r in zip(parts, keep)])
        merged = cls(np.concatenate([p.ids[r] for p, r in zip(parts, keep)]), codes,
                     np.concatenate([p.norms[r] for p, r in zip(parts, keep)]), vectors, keys, scales=scales)
        if not merged.clusterable(cluster_rows):
            return merged
        order, clusters = cluster_order(vectors, scales, cluster_rows)
        return merged._take(order, clusters)

    def clusterable(self, cluster_rows: int | None) -> bool:
        """Whether a merge with ``cluster_rows`` would order this segment's rows by cluster (it
        holds originals and :data:`~csr_index.clusters.CLUSTER_MIN_ROWS` rows, not yet clustered)."""
        return bool(cluster_rows) and self.clusters is None and self.vectors is not None and self.n >= CLUSTER_MIN_ROWS

    def _take(self, rows: np.ndarray, clusters: Clusters | None) -> "Segment":
        """A new segment of this one's ``rows``, in that order, with ``clusters``."""
        keys = None if self.keys is None else self.keys.take(pa.array(rows, type=pa.int64()))
        return Segment(self.ids[rows], SparseCodes(self.codes.indices[rows], self.codes.values[rows], self.codes.h),
                       self.norms[rows], None if self.vectors is None else self.vectors[rows], keys,
                       scales=None if self.scales is None else self.scales[rows], clusters=clusters)


def store_originals(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The originals of float32 rows ``x`` (n, d) as a segment holds them: float16 (ValueError
    where a component overflows it; no scales), or ``"int8"``: :func:`~csr_index.rerank.quantize_int8`
    rows and their float32 scales (symmetric per row, any magnitude)."""
    if dtype == "int8":
        return quantize_int8(x)
    peak = float(max(x.max(), -x.min())) if x.size else 0.0
    if peak > float(np.finfo(np.float16).max):
        raise ValueError(f"vector components up to {peak:.3g} overflow the float16 originals (max 65504); scale "
                         "the vectors, use vectors_dtype='int8' or store_vectors=False")
    return x.astype(np.float16), None


def _read_originals(table: pa.Table, dtype: str, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``vector`` column of a vectors table as ``dtype`` (float16 or int8) and, for int8, its
    ``scale`` float32 column (zero-copy views of the memory-mapped file); ``where`` names the
    segment in errors."""
    if dtype not in VECTORS_DTYPES:
        raise ValueError(f"vectors_dtype must be one of {VECTORS_DTYPES}, got {dtype!r}")
    vectors = fixed_size_column(table, "vector", np.dtype(dtype))
    if dtype != "int8":
        return vectors, None
    col = table.column("scale") if "scale" in table.column_names else None
    if col is None or col.type != pa.float32() or col.null_count:
        raise CorruptIndexError(f"{where} vectors need a float32 'scale' column without nulls "
                                f"(the table has {table.schema.names}, scale: {col.type if col is not None else None})")
    return vectors, _joined([c.to_numpy(zero_copy_only=True) for c in col.chunks if len(c)], (0,), np.float32)


def fixed_size_column(table: pa.Table, name: str, dtype: Any) -> np.ndarray:
    """A fixed_size_list column as an (n, width) numpy array; zero-copy for a single chunk."""
    if name not in table.column_names:
        raise CorruptIndexError(f"Arrow table lacks the column {name!r} (has {table.column_names})")
    col = table.column(name)
    if not pa.types.is_fixed_size_list(col.type) or col.type.value_type != pa.from_numpy_dtype(np.dtype(dtype)):
        raise CorruptIndexError(f"column {name!r} has type {col.type}, expected fixed_size_list<{np.dtype(dtype)}>")
    width = col.type.list_size
    return _joined([c.values.to_numpy(zero_copy_only=True).reshape(-1, width) for c in col.chunks if len(c)],
                   (0, width), dtype)


def _joined(chunks: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """One array from a column's numpy chunks: the chunk itself when there is one (zero-copy), else
    their concatenation, or an empty array of ``empty_shape``."""
    if not chunks:
        return np.empty(empty_shape, dtype=dtype)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
