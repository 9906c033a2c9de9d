"""Qdrant bridge: serve CSR codes from a Qdrant collection (or an embedded qdrant-edge shard).

Qdrant stores each code as a named sparse vector and scores a query by the dot
product over an exact inverted index, the same computation as
``CSRIndex.search(score="code")``. So that the two agree:

* under ``metric="cosine"`` the codes are uploaded L2-normalised (and queries are
  sent normalised): their dot product is the cosine of the codes, which is what the
  index computes; under ``metric="ip"`` raw codes are sent;
* point ids are the index's int64 ids, so re-running an export upserts the same
  points (no duplicates) and can skip the ones already present (resume);
* every vector is validated before anything is sent: finite values, unique
  indices sorted ascending, ``0 <= index < min(h, 2**32)``, ids unique in [0, 2**63).

Targets: a ``qdrant_client.QdrantClient`` (server, cluster, or local mode; the code
path is the same) plus a collection name, or an :class:`EdgeCollection`, Qdrant's
engine in-process via qdrant-edge-py (pinned to ``EDGE_VERSION``: its API is beta and
it validates nothing, so the checks here are its only protection).

>>> from qdrant_client import QdrantClient
>>> from csr_index.integrations import qdrant as cq
>>> client = QdrantClient(url="http://localhost:6333")
>>> cq.export(index, client, "docs", progress=True)
>>> D, I = cq.search(index, client, "docs", xq, 10)          # = index.search(xq, 10, score="code")
>>> with cq.EdgeCollection("docs.qedge") as edge:             # no server
...     cq.export(index, edge); D, I = cq.search(index, edge, None, xq, 10)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from csr_index import __version__
from csr_index.codes import SparseCodes
from csr_index.errors import NotTrainedError
from csr_index.search import rerank_exact, top_entries
from csr_index.validation import as_ids, as_matrix, check_k

if TYPE_CHECKING:
    from csr_index.index import CSRIndex

__all__ = [
    "EDGE_VERSION",
    "DEFAULT_VECTOR_NAME",
    "DEFAULT_DENSE_VECTOR_NAME",
    "EdgeCollection",
    "ExportReport",
    "QdrantExportError",
    "export",
    "export_codes",
    "search",
    "rescore",
    "index_metadata",
]

log = logging.getLogger(__name__)

EDGE_VERSION = "0.9.0"
DEFAULT_VECTOR_NAME = "csr"
DEFAULT_DENSE_VECTOR_NAME = "dense"
METADATA_KEY = "csr_index"
METADATA_FORMAT = 1
EDGE_METADATA_FILE = "csr_index.json"
INSTALL_HINT = "pip install 'csr-index[qdrant]'"
MAX_SPARSE_INDEX = (1 << 32) - 1
MAX_POINT_ID = (1 << 63) - 1
VALIDATE_CHUNK = 1 << 16
QUERY_BLOCK = 256
SCORE_MODES = ("code", "asymmetric")

Target = Any
"""A ``qdrant_client.QdrantClient`` (remote or local mode), an :class:`EdgeCollection`, or a bare
``qdrant_edge.EdgeShard``."""


class QdrantExportError(RuntimeError):
    """An upload to Qdrant failed after its retries; re-running the export resumes it."""


# ------------------------------------------------------------------ lazy imports
def _models() -> Any:
    try:
        from qdrant_client import models
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the Qdrant integration needs qdrant-client: {INSTALL_HINT}") from exc
    return models


_EDGE_CHECKED = False


def _edge() -> Any:
    global _EDGE_CHECKED
    try:
        import qdrant_edge
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the embedded Qdrant backend needs qdrant-edge-py=={EDGE_VERSION}: {INSTALL_HINT}") from exc
    if not _EDGE_CHECKED:
        _EDGE_CHECKED = True
        try:
            from importlib.metadata import version

            found = version("qdrant-edge-py")
        except Exception:  # noqa: BLE001 - metadata may be missing in odd installs
            found = "unknown"
        if found != EDGE_VERSION:
            log.warning(
                "qdrant-edge-py %s is installed; csr-index is tested with %s only (its API is beta): %s",
                found, EDGE_VERSION, INSTALL_HINT,
            )
    return qdrant_edge


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


# ----------------------------------------------------------------- validation
def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    return name


def _check_positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_point_ids(ids: Any, n: int) -> np.ndarray:
    """Qdrant point ids from int64 index ids: integers, unique, 0 <= id < 2**63."""
    arr = np.asarray(ids)
    if arr.ndim == 1 and len(arr) != n:
        raise ValueError(f"there are {n} codes but {len(arr)} point ids")
    if arr.ndim == 1 and arr.size and np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > MAX_POINT_ID:
        raise ValueError(f"point ids must be below 2**63 (they are returned as int64), got {int(arr.max())}")
    if arr.ndim == 1 and arr.size and arr.dtype == object:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
            bad = next(v for v in arr if not isinstance(v, (int, np.integer)) or isinstance(v, bool))
            raise TypeError(f"point ids must be integers (Qdrant u64; UUIDs are not supported here), got {bad!r}")
        if any(int(v) > MAX_POINT_ID for v in arr):
            raise ValueError("point ids must be below 2**63 (they are returned as int64)")
        arr = arr.astype(np.int64)
    return as_ids(arr, n, "point ids")


def _csr_rows(indices: np.ndarray, values: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, k) slots to CSR rows (indptr, indices int64, values float32): zero slots dropped,
    indices ascending within each row; under ``normalize`` each row has unit L2 norm
    (the same arithmetic as :meth:`SparseCodes.normalized`)."""
    idx = np.asarray(indices).astype(np.int64)
    val = np.asarray(values).astype(np.float32)
    if normalize:
        val = SparseCodes(idx, val, 1 << 62).normalized().values
    keep = val != 0  # NaN is kept, so the finiteness check sees it
    order = np.argsort(np.where(keep, idx, np.iinfo(np.int64).max), axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    val = np.take_along_axis(val, order, axis=1)
    keep = np.take_along_axis(keep, order, axis=1)
    indptr = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return indptr, idx[keep], val[keep]


def _validate_rows(
    indptr: np.ndarray, idx: np.ndarray, val: np.ndarray, ids: np.ndarray, h: int | None, start: int
) -> None:
    """Raise ValueError for the first row breaking a Qdrant sparse-vector rule."""
    row_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))

    def fail(entry: int, why: str) -> None:
        r = int(row_of[entry])
        raise ValueError(f"code of point id {int(ids[r])} (row {start + r}): {why}")

    bad = np.flatnonzero(~np.isfinite(val))
    if bad.size:
        fail(bad[0], f"value {val[bad[0]]!r} at latent {int(idx[bad[0]])} is not finite (NaN/inf)")
    limit = MAX_SPARSE_INDEX if h is None else min(h - 1, MAX_SPARSE_INDEX)
    bad = np.flatnonzero((idx < 0) | (idx > limit))
    if bad.size:
        bound = "2**32 (Qdrant's u32)" if h is None or h - 1 > MAX_SPARSE_INDEX else f"h={h}"
        fail(bad[0], f"latent index {int(idx[bad[0]])} is outside [0, {bound})")
    dup = np.flatnonzero((idx[1:] == idx[:-1]) & (row_of[1:] == row_of[:-1]))
    if dup.size:
        fail(dup[0], f"latent index {int(idx[dup[0]])} appears twice (Qdrant needs unique indices)")


def _validate_codes(codes: SparseCodes, ids: np.ndarray, normalize: bool) -> int:
    """Check every code before anything is sent; returns the number of non-empty codes."""
    if not isinstance(codes, SparseCodes):
        raise TypeError(f"codes must be csr_index.SparseCodes, got {type(codes).__name__}")
    if not np.issubdtype(codes.indices.dtype, np.integer):
        raise TypeError(f"code indices must be integers, got dtype {codes.indices.dtype}")
    if not (np.issubdtype(codes.values.dtype, np.floating) or np.issubdtype(codes.values.dtype, np.integer)):
        raise TypeError(f"code values must be real numbers, got dtype {codes.values.dtype}")
    if codes.n != len(ids):
        raise ValueError(f"there are {codes.n} codes but {len(ids)} point ids")
    nonempty = 0
    for s in range(0, codes.n, VALIDATE_CHUNK):
        e = min(codes.n, s + VALIDATE_CHUNK)
        indptr, idx, val = _csr_rows(codes.indices[s:e], codes.values[s:e], normalize=False)
        _validate_rows(indptr, idx, val, ids[s:e], codes.h, s)
        nonempty += int((np.diff(indptr) > 0).sum())
        if normalize:  # the L2 norm can overflow float32 even when every value is finite
            norms = SparseCodes(codes.indices[s:e], codes.values[s:e], codes.h).norms()
            bad = np.flatnonzero(~np.isfinite(norms))
            if bad.size:
                raise ValueError(
                    f"code of point id {int(ids[s + bad[0]])} (row {s + bad[0]}): its L2 norm overflows float32, "
                    "so it cannot be normalised"
                )
    return nonempty


def _check_dense(vectors: Any, n: int) -> np.ndarray:
    """An (n, d) numeric array, checked finite in chunks (a memory-mapped float16 array is not copied)."""
    arr = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"dense_vectors must be a 2-D array (n, d), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"dense_vectors must hold real numbers, got dtype {arr.dtype}")
    if len(arr) != n:
        raise ValueError(f"dense_vectors has {len(arr)} rows but there are {n} points")
    for s in range(0, n, VALIDATE_CHUNK):
        block = np.asarray(arr[s : s + VALIDATE_CHUNK], dtype=np.float32)
        bad = np.argwhere(~np.isfinite(block))
        if bad.size:
            raise ValueError(f"dense_vectors row {s + bad[0][0]} has a NaN or inf value (column {bad[0][1]})")
    return arr


# -------------------------------------------------------------------- payloads
def _json_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _json_type(t.value_type)
    if pa.types.is_float16(t):
        return False
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _json_type(t.value_type)
    if pa.types.is_struct(t):
        return all(_json_type(t.field(i).type) for i in range(t.num_fields))
    return False


def _is_vector_column(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


def _has_nonfinite(arr: pa.Array) -> bool:
    t = arr.type
    if pa.types.is_dictionary(t):
        return _has_nonfinite(arr.dictionary)
    if pa.types.is_floating(t):
        return bool(pc.any(pc.invert(pc.is_finite(arr))).as_py() or False)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_nonfinite(arr.flatten())
    if pa.types.is_struct(t):
        return any(_has_nonfinite(arr.field(i)) for i in range(t.num_fields))
    return False


def _check_payload_table(table: pa.Table) -> pa.Table:
    for name, col in zip(table.column_names, table.columns):
        if not _json_type(col.type):
            raise ValueError(
                f"payload column {name!r} has Arrow type {col.type}, which has no JSON form in a Qdrant "
                "payload; cast it (e.g. to string or float32) or leave it out of payload_columns"
            )
        if any(_has_nonfinite(chunk) for chunk in col.chunks):
            raise ValueError(f"payload column {name!r} contains NaN or inf, which JSON payloads cannot hold")
    return table


def _check_payload_dicts(payload: Sequence[Any], n: int) -> list[dict]:
    if len(payload) != n:
        raise ValueError(f"payload has {len(payload)} entries but there are {n} points")
    out = []
    for i, item in enumerate(payload):
        if item is None:
            item = {}
        if not isinstance(item, Mapping) or not all(isinstance(k, str) for k in item):
            raise ValueError(f"payload entry {i} must be a dict with string keys, got {type(item).__name__}")
        try:
            json.dumps(item, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"payload entry {i} is not valid JSON (no NaN/inf, only JSON types): {exc}") from exc
        out.append(dict(item))
    return out


def _read_payload_source(
    source: str | os.PathLike | pa.Table, columns: Sequence[str] | None, join: str | None
) -> pa.Table:
    if isinstance(source, pa.Table):
        schema = source.schema
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"payload file not found: {path}")
        try:
            schema = pq.read_schema(path)
        except pa.ArrowException as exc:
            raise ValueError(f"{path} is not a readable Parquet file: {exc}") from exc
    names = schema.names
    if columns is None:
        wanted = [f.name for f in schema if not _is_vector_column(f.type)]
    else:
        wanted = list(columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"payload columns {missing} are not in the payload source; its columns are {names}")
    read = list(dict.fromkeys(wanted + ([join] if join is not None and join in names else [])))
    table = source.select(read) if isinstance(source, pa.Table) else pq.read_table(path, columns=read)
    return table


def _align_payload(
    table: pa.Table, columns: list[str], join: str | None, ids: np.ndarray, keys: np.ndarray | None
) -> pa.Table:
    """Rows of ``table`` in the order of ``ids``: matched on ``join`` (integer column = ids,
    string column = keys), or positionally when the table has no such column."""
    n = len(ids)
    if join is not None and join in table.column_names:
        col = table.column(join).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if col.null_count:
            raise ValueError(f"payload join column {join!r} has {col.null_count} null rows")
        if pa.types.is_integer(col.type):
            src = np.asarray(col.to_numpy(), dtype=np.int64)
            want = ids
            what = "ids"
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            if keys is None:
                raise ValueError(
                    f"payload join column {join!r} holds strings but the index has no string keys; "
                    "join on an integer id column or pass join=None to match rows by position"
                )
            src = np.asarray(col.to_pylist(), dtype=object)
            want = keys
            what = "keys"
        else:
            raise ValueError(f"payload join column {join!r} has type {col.type}; expected integers or strings")
        position: dict[Any, int] = {}
        for row, value in enumerate(src.tolist()):
            if value in position:
                raise ValueError(f"payload join column {join!r} has the value {value!r} twice")
            position[value] = row
        rows = np.fromiter((position.get(v, -1) if v is not None else -1 for v in want.tolist()), np.int64, n)
        if (rows < 0).any():
            miss = want[rows < 0][:5].tolist()
            raise ValueError(
                f"{int((rows < 0).sum())} points have no payload row: no {join!r} value equals their {what}, "
                f"e.g. {miss}"
            )
        return table.take(pa.array(rows)).select(columns)
    if join is not None and join != "id":
        raise ValueError(f"payload source has no join column {join!r}; its columns are {table.column_names}")
    if table.num_rows != n:
        raise ValueError(
            f"payload source has {table.num_rows} rows but there are {n} points and no join column "
            f"({join!r}) to match them: pass a table with one row per point, in storage order"
        )
    return table.select(columns)


class _Payloads:
    """Per-batch payload dicts from an aligned Arrow table or a list of dicts."""

    def __init__(self, table: pa.Table | None = None, dicts: list[dict] | None = None) -> None:
        self.table = table
        self.dicts = dicts

    def batch(self, rows: np.ndarray) -> list[dict] | None:
        if self.dicts is not None:
            return [self.dicts[r] for r in rows]
        if self.table is not None:
            return self.table.take(pa.array(rows)).to_pylist()
        return None


# --------------------------------------------------------------------- metadata
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _adapter_sha256(index: "CSRIndex") -> str:
    adapter = index.adapter
    if adapter is None:
        raise NotTrainedError("this CSRIndex is not trained yet: call index.train(x) first")
    cached = _FINGERPRINTS.get(adapter)
    if cached is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(adapter.state_dict().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32).tobytes())
        cached = _FINGERPRINTS[adapter] = digest.hexdigest()
    return cached


def index_metadata(
    index: "CSRIndex", vector_name: str = DEFAULT_VECTOR_NAME, dense_vector_name: str | None = None
) -> dict[str, Any]:
    """What an export records in the collection's metadata (under ``"csr_index"``).

    ``search`` checks it: a collection exported from another adapter, or with the
    other value convention, is refused instead of returning meaningless results.
    """
    return {
        "format": METADATA_FORMAT,
        "library_version": __version__,
        "adapter_sha256": _adapter_sha256(index),
        "d": index.d,
        "h": index.h,
        "k": index.k,
        "metric": index.metric,
        "values": "l2-normalized" if index.metric == "cosine" else "raw",
        "vector_name": vector_name,
        "dense_vector_name": dense_vector_name,
        "dense_distance": "dot" if dense_vector_name else None,
    }


def _check_metadata(found: Mapping[str, Any] | None, index: "CSRIndex", where: str, vector_name: str) -> None:
    if not found:
        log.debug("%s carries no csr_index metadata; skipping the adapter check", where)
        return
    if found.get("adapter_sha256") != _adapter_sha256(index):
        raise ValueError(
            f"{where} holds codes of another CSR adapter (sha256 {str(found.get('adapter_sha256'))[:12]}…, "
            f"this index {_adapter_sha256(index)[:12]}…): its scores would be meaningless; "
            "export this index to a new collection, or re-export with recreate=True"
        )
    expected = "l2-normalized" if index.metric == "cosine" else "raw"
    if found.get("values") != expected:
        raise ValueError(
            f"{where} holds {found.get('values')} codes but metric={index.metric!r} needs {expected} codes"
        )
    if found.get("vector_name") not in (None, vector_name):
        raise ValueError(
            f"{where} stores the codes under the sparse vector {found.get('vector_name')!r}, not {vector_name!r}"
        )


# ---------------------------------------------------------------------- targets
@dataclass
class _Batch:
    ids: list[int]
    sparse: list[tuple[list[int], list[float]]]
    dense: list[list[float]] | None
    payloads: list[dict] | None


def _transient(exc: BaseException) -> bool:
    """Whether retrying a failed request may help (network errors, 5xx, 429, gRPC UNAVAILABLE)."""
    try:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code in (408, 429, 500, 502, 503, 504)
    if isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError)):
        return True
    try:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
            )
    except ImportError:  # pragma: no cover
        pass
    return False


class _ClientTarget:
    """A collection behind a ``QdrantClient``: remote (REST/gRPC) and local mode alike."""

    def __init__(self, client: Any, collection_name: Any, vector_name: str, dense_name: str | None) -> None:
        if not hasattr(client, "query_batch_points"):
            raise TypeError(
                f"client must be a qdrant_client.QdrantClient or an EdgeCollection, got {type(client).__name__}"
            )
        self.client = client
        self.name = _check_name(collection_name, "collection_name")
        self.vector_name = vector_name
        self.dense_name = dense_name
        self.wait = True
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
                create: Mapping[str, Any]) -> None:
        models = _models()
        if recreate and self.client.collection_exists(self.name):
            log.info("deleting %s (recreate=True)", self.describe())
            self.client.delete_collection(self.name)
        if not self.client.collection_exists(self.name):
            sparse = {self.vector_name: models.SparseVectorParams(
                index=models.SparseIndexParams(on_disk=create.get("on_disk")),
                modifier=models.Modifier.IDF if idf else None,
            )}
            dense = ({self.dense_name: models.VectorParams(size=dense_size, distance=models.Distance.DOT)}
                     if dense_size else None)
            extra = {k: v for k, v in create.items() if k != "on_disk" and v is not None}
            log.info("creating %s (sparse vector %r%s%s)", self.describe(), self.vector_name,
                     ", IDF" if idf else "", f", dense {self.dense_name!r} d={dense_size}" if dense_size else "")
            self.client.create_collection(
                self.name, vectors_config=dense, sparse_vectors_config=sparse,
                metadata={METADATA_KEY: metadata} if metadata else None, **extra,
            )
            return
        self.check_layout(idf=idf, dense_size=dense_size)
        found = self.read_metadata()
        if metadata:
            if found:
                if found.get("adapter_sha256") != metadata.get("adapter_sha256") or found.get("values") != metadata.get(
                    "values"
                ):
                    raise ValueError(
                        f"{self.describe()} already holds codes of another CSR adapter or value convention "
                        f"({found.get('adapter_sha256', '?')[:12]}…/{found.get('values')} vs "
                        f"{metadata['adapter_sha256'][:12]}…/{metadata['values']}); "
                        "export to a new collection or pass recreate=True"
                    )
            else:
                self.client.update_collection(self.name, metadata={METADATA_KEY: metadata})
                self._info_cache = None

    def check_layout(self, *, idf: bool | None, dense_size: int | None) -> None:
        """Raise ValueError when the collection lacks the vectors this export/search needs."""
        params = self._info().config.params
        sparse = params.sparse_vectors or {}
        if self.vector_name not in sparse:
            raise ValueError(
                f"{self.describe()} has no sparse vector {self.vector_name!r} (it has {sorted(sparse)}); "
                "pass vector_name=… or export to a new collection"
            )
        modifier = getattr(sparse[self.vector_name], "modifier", None)
        has_idf = modifier is not None and str(getattr(modifier, "value", modifier)).lower() == "idf"
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
                    "hybrid search needs an export with dense=True"
                )
            if dense[self.dense_name].size != dense_size:
                raise ValueError(
                    f"{self.describe()}: dense vector {self.dense_name!r} has size {dense[self.dense_name].size}, "
                    f"expected {dense_size}"
                )

    def sparse_has_idf(self) -> bool:
        sparse = self._info().config.params.sparse_vectors or {}
        modifier = getattr(sparse.get(self.vector_name), "modifier", None)
        return modifier is not None and str(getattr(modifier, "value", modifier)).lower() == "idf"

    def read_metadata(self) -> dict | None:
        meta = getattr(self._info().config, "metadata", None) or {}
        return meta.get(METADATA_KEY)

    # -- points
    def count(self) -> int:
        return int(self.client.count(self.name, exact=True).count)

    def existing(self, ids: list[int]) -> set[int]:
        records = self.client.retrieve(self.name, ids=ids, with_payload=False, with_vectors=False)
        return {int(r.id) for r in records}

    def upsert(self, batch: _Batch) -> None:
        models = _models()
        points = []
        for j, pid in enumerate(batch.ids):
            vector: dict[str, Any] = {
                self.vector_name: models.SparseVector(indices=batch.sparse[j][0], values=batch.sparse[j][1])
            }
            if batch.dense is not None:
                vector[self.dense_name] = batch.dense[j]
            points.append(models.PointStruct(
                id=pid, vector=vector, payload=batch.payloads[j] if batch.payloads is not None else None
            ))
        self.client.upsert(self.name, points=points, wait=self.wait)

    def flush(self) -> None:
        pass

    def query(self, sparse: list[tuple[list[int], list[float]] | None], dense: np.ndarray | None, limit: int,
              rrf_k: int) -> list[list[tuple[Any, float]]]:
        models = _models()
        requests, slots = [], []
        for qi, sv in enumerate(sparse):
            sq = models.SparseVector(indices=sv[0], values=sv[1]) if sv is not None else None
            if dense is None:
                if sq is None:
                    continue
                req = models.QueryRequest(query=sq, using=self.vector_name, limit=limit,
                                          with_payload=False, with_vector=False)
            else:
                prefetch = [models.Prefetch(query=dense[qi].tolist(), using=self.dense_name, limit=limit)]
                if sq is not None:
                    prefetch.insert(0, models.Prefetch(query=sq, using=self.vector_name, limit=limit))
                req = models.QueryRequest(prefetch=prefetch, query=models.RrfQuery(rrf=models.Rrf(k=rrf_k)),
                                          limit=limit, with_payload=False, with_vector=False)
            requests.append(req)
            slots.append(qi)
        out: list[list[tuple[Any, float]]] = [[] for _ in sparse]
        if requests:
            responses = self.client.query_batch_points(self.name, requests=requests)
            for qi, resp in zip(slots, responses):
                out[qi] = [(p.id, p.score) for p in resp.points]
        return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


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
        qe = _edge()
        self.path = Path(path)
        self._layout: dict | None = None
        self._metadata: dict | None = None
        self._closed = True
        self.vector_name = _check_name(vector_name, "vector_name")
        self.dense_vector_name = _check_name(dense_vector_name, "dense_vector_name")
        if dense_size is not None:
            dense_size = _check_positive(dense_size, "dense_size")
        exists = (self.path / self.CONFIG_FILE).exists() or (self.path / "segments").exists()
        if exists:
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
        has_idf = str((sparse[self.vector_name] or {}).get("modifier", "")).lower() == "idf"
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
        layout = self.layout() or {}
        entry = (layout.get("sparse_vectors") or {}).get(self.vector_name) or {}
        return str(entry.get("modifier", "")).lower() == "idf"

    @property
    def has_dense(self) -> bool:
        layout = self.layout() or {}
        return self.dense_vector_name in (layout.get("vectors") or {})

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
        qe = _edge()
        return int(_edge_call("count", lambda: self.shard.count(qe.CountRequest(exact=True))))

    def flush(self) -> None:
        _edge_call("flush", self.shard.flush)

    def optimize(self) -> bool:
        """Merge and index segments (Qdrant's optimizers, in-process); True if anything changed."""
        return bool(_edge_call("optimize", self.shard.optimize))

    def close(self) -> None:
        if not self._closed:
            _edge_call("flush", self.shard.flush)
            _edge_call("close", self.shard.close)
            self._closed = True

    def __enter__(self) -> "EdgeCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeCollection({str(self.path)!r}, vector_name={self.vector_name!r})"


class _EdgeTarget:
    """An :class:`EdgeCollection` (or a bare ``qdrant_edge.EdgeShard``) as an export/search target."""

    def __init__(self, edge: Any, vector_name: str, dense_name: str | None) -> None:
        self.edge = edge if isinstance(edge, EdgeCollection) else None
        self.shard = edge.shard if isinstance(edge, EdgeCollection) else edge
        if self.edge is not None and vector_name != self.edge.vector_name:
            raise ValueError(f"vector_name={vector_name!r} but {self.edge!r} was opened with "
                             f"vector_name={self.edge.vector_name!r}")
        if self.edge is not None and dense_name is not None and dense_name != self.edge.dense_vector_name:
            raise ValueError(f"dense_vector_name={dense_name!r} but {self.edge!r} was opened with "
                             f"dense_vector_name={self.edge.dense_vector_name!r}")
        self.vector_name = vector_name
        self.dense_name = dense_name
        self.local = True

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
            if found and (found.get("adapter_sha256") != metadata["adapter_sha256"]
                          or found.get("values") != metadata["values"]):
                raise ValueError(
                    f"{self.describe()} already holds codes of another CSR adapter or value convention; "
                    "export to a new directory"
                )
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
        qe = _edge()
        return int(_edge_call("count", lambda: self.shard.count(qe.CountRequest(exact=True))))

    def existing(self, ids: list[int]) -> set[int]:
        records = _edge_call("retrieve", lambda: self.shard.retrieve(ids, False, False))
        return {int(r.id) for r in records}

    def upsert(self, batch: _Batch) -> None:
        qe = _edge()
        points = []
        for j, pid in enumerate(batch.ids):
            vector: dict[str, Any] = {self.vector_name: qe.SparseVector(batch.sparse[j][0], batch.sparse[j][1])}
            if batch.dense is not None:
                vector[self.dense_name] = batch.dense[j]
            points.append(qe.Point(pid, vector, batch.payloads[j] if batch.payloads is not None else None))
        _edge_call("upsert", lambda: self.shard.update(qe.UpdateOperation.upsert_points(points)))

    def flush(self) -> None:
        _edge_call("flush", self.shard.flush)

    def query(self, sparse: list[tuple[list[int], list[float]] | None], dense: np.ndarray | None, limit: int,
              rrf_k: int) -> list[list[tuple[Any, float]]]:
        qe = _edge()
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


def _target(client: Any, collection_name: Any, vector_name: str, dense_name: str | None) -> Any:
    if isinstance(client, EdgeCollection) or type(client).__name__ == "EdgeShard":
        if collection_name is not None:
            raise ValueError(
                f"collection_name={collection_name!r} does not apply to a qdrant-edge shard "
                "(a shard is one collection); pass None"
            )
        return _EdgeTarget(client, vector_name, dense_name)
    return _ClientTarget(client, collection_name, vector_name, dense_name)


# ----------------------------------------------------------------------- export
@dataclass
class ExportReport:
    """What an export did. ``points_count`` is the target's count afterwards."""

    target: str
    total: int
    uploaded: int
    skipped: int
    points_count: int
    seconds: float

    @property
    def rate(self) -> float:
        """Uploaded points per second."""
        return self.uploaded / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.target}: {self.total} points ({self.uploaded} uploaded, {self.skipped} already there) in "
            f"{self.seconds:.1f}s ({self.rate:,.0f} points/s); it holds {self.points_count} points"
        )


def export(
    index: "CSRIndex",
    client: Target,
    collection_name: str | None = None,
    *,
    vector_name: str = DEFAULT_VECTOR_NAME,
    payload: str | os.PathLike | pa.Table | Sequence[Mapping[str, Any]] | None = None,
    payload_columns: Sequence[str] | None = None,
    join: str | None = "id",
    keys_field: str | None = "key",
    dense: bool | Any = False,
    dense_vector_name: str = DEFAULT_DENSE_VECTOR_NAME,
    idf: bool = False,
    batch_size: int = 256,
    parallel: int = 1,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    write_consistency_factor: int | None = None,
    on_disk: bool | None = None,
    collection_options: Mapping[str, Any] | None = None,
    recreate: bool = False,
    resume: bool = True,
    wait: bool = True,
    max_retries: int = 3,
    store_metadata: bool = True,
    progress: bool = False,
) -> ExportReport:
    """Upload the codes of ``index`` as points of a Qdrant collection (or an :class:`EdgeCollection`).

    Point id = the index's id; the sparse vector ``vector_name`` holds the code
    (L2-normalised under metric="cosine", raw under "ip"), so Qdrant's dot product
    equals ``CSRIndex.search(score="code")``. The collection is created if missing
    (with ``shard_number``, ``replication_factor``, ``write_consistency_factor``,
    ``on_disk`` for the sparse index, and any other ``create_collection`` argument in
    ``collection_options``); an existing one must have a compatible layout and, if it
    was exported before, the same adapter (else ValueError; ``recreate`` drops it first).

    payload: a Parquet path, an Arrow table or one dict per point (storage order).
        Tables are matched to points on column ``join``: an integer column against the
        ids, a string column against the index's keys; without that column, row r
        belongs to the r-th point. ``payload_columns`` defaults to every column that is
        not a float-list (embedding) column.
    keys_field: payload field that receives the index's string keys (None: don't; skipped
        when the payload already carries them as its string join column).
    dense: True uploads ``index.vectors()`` (needs store_vectors=True), an (n, d)
        array uploads those vectors (prepared as the index prepares queries), as a
        dense vector ``dense_vector_name`` (dot product) for hybrid search.
    idf: create the sparse vector with Qdrant's IDF modifier (scores then differ from
        CSRIndex's; CSR weights are learned, so the default is off).
    batch_size, parallel: points per request, and requests in flight (threads;
        remote servers only: local mode and qdrant-edge upload sequentially).
    resume: skip points already present (checked per batch by id), so a re-run after
        an interruption sends only what is missing. False re-sends everything
        (upserts overwrite; still no duplicates).
    wait: wait for each batch to be applied (Qdrant ``wait=true``).
    max_retries: retries of a batch on network errors, timeouts, 429 and 5xx.
    store_metadata: record :func:`index_metadata` in the collection's metadata (or
        ``csr_index.json`` in an edge shard), which ``search`` checks; turn it off for a
        server without collection metadata.
    Every code, id, dense vector and payload is validated before anything is sent.
    """
    if not index.is_trained:
        raise NotTrainedError("this CSRIndex is not trained yet: call index.train(x) first")
    ids = np.asarray(index.ids, dtype=np.int64)
    codes = index.codes()
    n = len(ids)
    dense_vectors = None
    if dense is True:
        dense_vectors = index.vectors()  # ValueError when store_vectors=False
    elif dense is not False and dense is not None:
        dense_vectors = _prepare_queries(index, dense, "dense vectors")
        if len(dense_vectors) != n:
            raise ValueError(f"dense has {len(dense_vectors)} vectors but the index holds {n} points")
    keys = None
    if keys_field is not None or (payload is not None and not _is_dict_sequence(payload)):
        raw_keys = index.keys_of(ids) if n else np.empty(0, dtype=object)
        keys = raw_keys if any(k is not None for k in raw_keys) else None
    table = None
    dicts = None
    if payload is not None:
        if _is_dict_sequence(payload):
            dicts = _check_payload_dicts(payload, n)
        else:
            source = _read_payload_source(payload, payload_columns, join)
            columns = list(payload_columns) if payload_columns is not None else [
                c for c in source.column_names if c in set(_default_columns(source.schema))
            ]
            table = _align_payload(source, columns, join, ids, keys)
    joined_on_keys = (table is not None and join in table.column_names
                      and pa.types.is_string(table.schema.field(join).type))
    if keys_field is not None and keys is not None and not joined_on_keys:
        if table is not None:
            if keys_field not in table.column_names:
                table = table.append_column(keys_field, pa.array(keys.tolist(), type=pa.string()))
        elif dicts is not None:
            dicts = [{keys_field: k, **d} if keys_field not in d else d for d, k in zip(dicts, keys.tolist())]
        else:
            table = pa.table({keys_field: pa.array(keys.tolist(), type=pa.string())})
    meta = index_metadata(index, vector_name, dense_vector_name if dense_vectors is not None else None)
    return export_codes(
        codes, ids, client, collection_name,
        normalize=index.metric == "cosine",
        payload=table if table is not None else dicts,
        dense_vectors=dense_vectors,
        vector_name=vector_name, dense_vector_name=dense_vector_name, idf=idf,
        batch_size=batch_size, parallel=parallel,
        shard_number=shard_number, replication_factor=replication_factor,
        write_consistency_factor=write_consistency_factor, on_disk=on_disk,
        collection_options=collection_options, recreate=recreate, resume=resume, wait=wait,
        max_retries=max_retries, metadata=meta if store_metadata else None, progress=progress,
    )


def _is_dict_sequence(payload: Any) -> bool:
    return isinstance(payload, Sequence) and not isinstance(payload, (str, bytes))


def _default_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if not _is_vector_column(f.type)]


def export_codes(
    codes: SparseCodes,
    ids: Any,
    client: Target,
    collection_name: str | None = None,
    *,
    normalize: bool = False,
    payload: pa.Table | Sequence[Mapping[str, Any]] | None = None,
    dense_vectors: Any = None,
    vector_name: str = DEFAULT_VECTOR_NAME,
    dense_vector_name: str = DEFAULT_DENSE_VECTOR_NAME,
    idf: bool = False,
    batch_size: int = 256,
    parallel: int = 1,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    write_consistency_factor: int | None = None,
    on_disk: bool | None = None,
    collection_options: Mapping[str, Any] | None = None,
    recreate: bool = False,
    resume: bool = True,
    wait: bool = True,
    max_retries: int = 3,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> ExportReport:
    """Upload any sparse codes (one per id) to Qdrant: the engine behind :func:`export`.

    ``payload`` (Arrow table or dicts) and ``dense_vectors`` (n, d) are given in the
    order of ``ids``. ``normalize`` L2-normalises each code before upload.
    ``metadata`` is stored in the collection's metadata under ``"csr_index"``.
    See :func:`export` for the other arguments.
    """
    started = time.perf_counter()
    vector_name = _check_name(vector_name, "vector_name")
    dense_vector_name = _check_name(dense_vector_name, "dense_vector_name")
    if dense_vectors is not None and dense_vector_name == vector_name:
        raise ValueError(f"the dense and sparse vectors need different names, both are {vector_name!r}")
    batch_size = _check_positive(batch_size, "batch_size")
    parallel = _check_positive(parallel, "parallel")
    if isinstance(max_retries, bool) or not isinstance(max_retries, (int, np.integer)) or max_retries < 0:
        raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
    for what, value in (("shard_number", shard_number), ("replication_factor", replication_factor),
                        ("write_consistency_factor", write_consistency_factor)):
        if value is not None:
            _check_positive(value, what)

    # ---- validate everything before the first request
    if not isinstance(codes, SparseCodes):
        raise TypeError(f"codes must be csr_index.SparseCodes, got {type(codes).__name__}")
    point_ids = _check_point_ids(ids, codes.n)
    nonempty = _validate_codes(codes, point_ids, normalize)
    n = codes.n
    dense_arr = None
    if dense_vectors is not None:
        dense_arr = _check_dense(dense_vectors, n)
    payloads = _Payloads()
    if payload is not None:
        if isinstance(payload, pa.Table):
            if payload.num_rows != n:
                raise ValueError(f"payload table has {payload.num_rows} rows but there are {n} points")
            payloads = _Payloads(table=_check_payload_table(payload))
        else:
            payloads = _Payloads(dicts=_check_payload_dicts(payload, n))
    if nonempty < n:
        log.info("%d of %d codes are empty (all zero): stored, but never a search result", n - nonempty, n)

    target = _target(client, collection_name, vector_name, dense_vector_name if dense_arr is not None else None)
    if isinstance(target, _ClientTarget):
        target.wait = bool(wait)
    if parallel > 1 and target.local:
        log.info("parallel=%d ignored: local mode and qdrant-edge upload from one thread", parallel)
        parallel = 1
    create = {"shard_number": shard_number, "replication_factor": replication_factor,
              "write_consistency_factor": write_consistency_factor, "on_disk": on_disk,
              **dict(collection_options or {})}
    target.prepare(idf=bool(idf), dense_size=dense_arr.shape[1] if dense_arr is not None else None,
                   metadata=dict(metadata) if metadata else None, recreate=recreate, create=create)

    before = target.count() if resume else 0
    check_existing = resume and before > 0
    if check_existing:
        log.info("%s already holds %d points: resuming (only missing ids are sent)", target.describe(), before)
    log.info("exporting %d codes to %s in batches of %d", n, target.describe(), batch_size)

    def make_batch(rows: np.ndarray) -> _Batch:
        indptr, idx, val = _csr_rows(codes.indices[rows], codes.values[rows], normalize)
        idx_l, val_l = idx.tolist(), val.tolist()
        sparse = [(idx_l[indptr[j]:indptr[j + 1]], val_l[indptr[j]:indptr[j + 1]]) for j in range(len(rows))]
        return _Batch(
            ids=point_ids[rows].tolist(),
            sparse=sparse,
            dense=np.asarray(dense_arr[rows], dtype=np.float32).tolist() if dense_arr is not None else None,
            payloads=payloads.batch(rows),
        )

    def run_batch(start: int) -> tuple[int, int]:
        """Upload rows [start, start + batch_size) that are missing; returns (sent, skipped)."""
        stop = min(n, start + batch_size)
        rows = np.arange(start, stop)
        if check_existing:
            present = _retrying(lambda: target.existing(point_ids[rows].tolist()), max_retries,
                                f"checking which of rows {start}..{stop - 1} exist", target)
            if present:
                rows = rows[~np.isin(point_ids[rows], np.fromiter(present, np.int64, len(present)))]
        skipped = stop - start - len(rows)
        if len(rows):
            batch = make_batch(rows)
            _retrying(lambda: target.upsert(batch), max_retries, f"uploading rows {start}..{stop - 1}", target)
        log.debug("batch at row %d: %d sent, %d already there", start, len(rows), skipped)
        return len(rows), skipped

    uploaded = skipped = 0
    bar = tqdm(total=n, disable=not progress, unit="pt", desc=f"export to {target.describe()}")
    try:
        starts = range(0, n, batch_size)
        if parallel == 1:
            for start in starts:
                sent, skip = run_batch(start)
                uploaded += sent
                skipped += skip
                bar.update(sent + skip)
        else:
            with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="csr-qdrant") as pool:
                pending: set[Future] = set()
                it = iter(starts)
                try:
                    for start in it:
                        pending.add(pool.submit(run_batch, start))
                        if len(pending) >= 2 * parallel:
                            done, pending = wait_futures(pending, return_when=FIRST_COMPLETED)
                            for fut in done:
                                sent, skip = fut.result()
                                uploaded += sent
                                skipped += skip
                                bar.update(sent + skip)
                    for fut in pending:
                        sent, skip = fut.result()
                        uploaded += sent
                        skipped += skip
                        bar.update(sent + skip)
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    target.flush()
    after = target.count()
    seconds = time.perf_counter() - started
    report = ExportReport(target.describe(), n, uploaded, skipped, after, seconds)
    if after < n and wait:
        log.warning("%s holds %d points after exporting %d: some are missing; re-run the export",
                    target.describe(), after, n)
    elif after > n:
        log.warning("%s holds %d points, %d more than this export: points from elsewhere are in it",
                    target.describe(), after, after - n)
    log.info("exported %s", report)
    return report


def _retrying(fn: Callable[[], Any], max_retries: int, what: str, target: Any) -> Any:
    delay = 0.5
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt < max_retries and _transient(exc):
                log.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt + 1, max_retries, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            raise QdrantExportError(
                f"{what} to {target.describe()} failed after {attempt + 1} attempt(s): {exc}. "
                "Points already uploaded are kept: run the export again to resume."
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------- search
def _prepare_queries(index: "CSRIndex", x: Any, name: str = "queries") -> np.ndarray:
    """What ``CSRIndex`` searches with: float32 (n, d), L2-normalised under metric='cosine'."""
    arr = as_matrix(x, index.d, name)
    if index.metric == "cosine":
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{name} has all-zero rows, which have no direction under metric='cosine'")
        arr = arr / norms
    return arr


_ROWS: "weakref.WeakKeyDictionary[Any, tuple[Any, np.ndarray, np.ndarray]]" = weakref.WeakKeyDictionary()


def _storage_rows(index: "CSRIndex", ids: np.ndarray) -> np.ndarray:
    """Storage rows of ``ids`` (any shape; -1 stays -1); KeyError for an id the index lacks."""
    stored = index.ids
    owner = stored.base if stored.base is not None else stored
    cached = _ROWS.get(index)
    if cached is None or cached[0] is not owner or len(cached[2]) != len(stored):
        sorter = np.argsort(stored, kind="stable")
        cached = (owner, sorter, np.asarray(stored)[sorter])
        _ROWS[index] = cached
    _, sorter, sorted_ids = cached
    flat = np.asarray(ids, dtype=np.int64).reshape(-1)
    rows = np.full(flat.shape, -1, dtype=np.int64)
    valid = flat >= 0
    if len(sorted_ids) == 0:
        if valid.any():
            raise KeyError(f"ids not in the index: {flat[valid][:5].tolist()}")
        return rows.reshape(np.shape(ids))
    pos = np.minimum(np.searchsorted(sorted_ids, flat[valid]), len(sorted_ids) - 1)
    found = sorted_ids[pos] == flat[valid]
    if not found.all():
        raise KeyError(
            f"ids not in the index: {flat[valid][~found][:5].tolist()} (was the collection exported from "
            "another index?)"
        )
    rows[valid] = sorter[pos]
    return rows.reshape(np.shape(ids))


def rescore(
    index: "CSRIndex",
    x: Any,
    candidates: Any,
    topk: int,
    *,
    score: str = "exact",
    k: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score candidate ids per query exactly as ``index.search`` would, and keep the best ``topk``.

    ``candidates`` (nq, R) int64 ids, -1 = none. ``score``: ``"code"`` (query code x
    doc code, cosine of codes under metric='cosine'; k latents, default the index's k),
    ``"asymmetric"`` (dense query vs the doc's reconstruction; the full projection, or
    with ``k`` cut to its k top latents, as ``CSRIndex.search``) or ``"exact"`` (inner
    product with the stored originals; needs store_vectors=True).
    Returns D float32 (nq, topk) descending and I int64 (nq, topk), (-inf, -1) padded.
    (Candidate for a public ``CSRIndex.rescore``; uses ``index._norms`` for "asymmetric".)
    """
    if score not in ("code", "asymmetric", "exact"):
        raise ValueError(f"score must be 'code', 'asymmetric' or 'exact', got {score!r}")
    topk = check_k(topk, 1 << 31, "topk")
    k = None if k is None else check_k(k, index.k)
    xq = _prepare_queries(index, x)
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or cand.shape[0] != len(xq):
        raise ValueError(f"candidates must have shape ({len(xq)}, R), got {cand.shape}")
    return _rescore(index, x, xq, cand, topk, score, k)


def _rescore(
    index: "CSRIndex", x_raw: Any, xq: np.ndarray, cand: np.ndarray, topk: int, score: str, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    rows = _storage_rows(index, cand)
    if score == "exact":
        D, picked = rerank_exact(xq, rows, index.vectors(), topk)
        return D, _rows_to_ids(index, picked)
    nq = len(xq)
    if score == "asymmetric":
        adapter = index.adapter
        with torch.inference_mode():
            xt = torch.from_numpy(xq)
            projected = adapter.project(xt)
            offset = (xt @ adapter.pre_bias).numpy()
            if k is None:  # the full projection, as CSRIndex.search(score="asymmetric") without k
                qdense = projected.numpy()
            else:  # cut to the k latents of largest pre-activation
                keep = torch.topk(adapter.preactivations(xt), k, dim=1).indices
                cut = torch.gather(projected, 1, keep)
                qdense = np.zeros((nq, index.h), dtype=np.float32)
                np.put_along_axis(qdense, keep.numpy().astype(np.int64), cut.numpy(), axis=1)
        norms = index._norms  # reconstruction norms, storage order (a documented internal)
        scale = 1.0 / np.maximum(norms, 1e-12) if index.metric == "cosine" else None
    else:
        qcodes = index.encode(x_raw, index.k if k is None else k)
        if index.metric == "cosine":
            qcodes = qcodes.normalized()
        qdense = qcodes.to_dense()
        offset = None
        if index.metric == "cosine":
            dn = index.codes().norms()
            scale = np.divide(1.0, dn, out=np.zeros_like(dn), where=dn > 0)
        else:
            scale = None
    stored = index.codes()
    scores = np.full(cand.shape, -np.inf, dtype=np.float32)
    for s in range(0, nq, QUERY_BLOCK):
        r = rows[s : s + QUERY_BLOCK]
        safe = np.maximum(r, 0)
        didx = stored.indices[safe].astype(np.int64)  # (b, R, kd)
        dval = stored.values[safe].astype(np.float32)
        gathered = np.take_along_axis(qdense[s : s + QUERY_BLOCK, None, :], didx.reshape(len(r), -1)[:, None, :],
                                      axis=2).reshape(didx.shape)
        block = (gathered * dval).sum(axis=2, dtype=np.float32)
        if offset is not None:
            block = block + offset[s : s + QUERY_BLOCK, None]
        if scale is not None:
            block = block * scale[safe]
        block[r < 0] = -np.inf
        scores[s : s + QUERY_BLOCK] = block
    D, pos = top_entries(scores, topk)
    picked = np.where(pos >= 0, np.take_along_axis(cand, np.maximum(pos, 0), axis=1), -1)
    return D, picked


def _rows_to_ids(index: "CSRIndex", rows: np.ndarray) -> np.ndarray:
    stored = np.asarray(index.ids)
    return np.where(rows >= 0, stored[np.maximum(rows, 0)], -1)


def search(
    index: "CSRIndex",
    client: Target,
    collection_name: str | None,
    xq: Any,
    topk: int = 10,
    *,
    k: int | None = None,
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

    Queries are encoded by the index's adapter (k latents, default the index's k) and
    sent in batches of ``batch_size`` (``query_batch_points``). Qdrant returns the
    best ``candidates`` points by code x code; then, as in ``CSRIndex.search``:

    score: ``"code"`` keeps Qdrant's ranking (equal to ``index.search(score="code")``);
        ``"asymmetric"`` re-scores the candidates with the asymmetric score (the
        dense query against each doc's reconstruction; the full projection, or cut
        to k latents when ``k`` is given, as ``CSRIndex.search``). It equals
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
    """
    if not index.is_trained:
        raise NotTrainedError("this CSRIndex is not trained yet: call index.train(x) first")
    topk = check_k(topk, 1 << 31, "topk")
    k = None if k is None else check_k(k, index.k)
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
    candidates = _check_positive(candidates, "candidates")
    if candidates < shortlist:
        raise ValueError(f"candidates={candidates} is below the shortlist max(topk, rerank)={shortlist}")
    rrf_k = _check_positive(rrf_k, "rrf_k")
    batch_size = _check_positive(batch_size, "batch_size")
    vector_name = _check_name(vector_name, "vector_name")
    xq_prepared = _prepare_queries(index, xq)
    nq = len(xq_prepared)

    target = _target(client, collection_name, vector_name, dense_vector_name if hybrid else None)
    if check:
        target.check_layout(idf=None, dense_size=index.d if hybrid else None)
        _check_metadata(target.read_metadata(), index, target.describe(), vector_name)
        if target.sparse_has_idf():
            log.warning("%s applies IDF to %r: scores will differ from CSRIndex.search", target.describe(),
                        vector_name)

    codes = index.encode(xq, k)  # k=None: the index's k
    if index.metric == "cosine":
        codes = codes.normalized()
    indptr, idx, val = _csr_rows(codes.indices, codes.values, normalize=False)
    idx_l, val_l = idx.tolist(), val.tolist()
    sparse = [(idx_l[indptr[q]:indptr[q + 1]], val_l[indptr[q]:indptr[q + 1]]) if indptr[q + 1] > indptr[q]
              else None for q in range(nq)]
    D = np.full((nq, candidates), -np.inf, dtype=np.float32)
    I = np.full((nq, candidates), -1, dtype=np.int64)
    bar = tqdm(total=nq, disable=not progress, unit="q", desc=f"search {target.describe()}")
    try:
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
    finally:
        bar.close()
    if score == "asymmetric":
        D, I = _rescore(index, xq, xq_prepared, I, shortlist, "asymmetric", k)
    else:
        D, I = D[:, :shortlist], I[:, :shortlist]
    if rerank:
        D, I = _rescore(index, xq, xq_prepared, I, topk, "exact", k)
    return D[:, :topk], I[:, :topk]
