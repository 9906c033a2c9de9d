"""Checks run before anything is sent to Qdrant, and the CSR row form its sparse vectors take.

Qdrant's rules: a sparse vector has finite values and unique indices with
``0 <= index < 2**32`` (here also ``< h``); a point id is an unsigned integer (here
below 2**63, as ids come back as int64). qdrant-edge checks none of this itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from csr_index.codes import SparseCodes
from csr_index.errors import NotTrainedError
from csr_index.validation import as_ids

if TYPE_CHECKING:
    from csr_index.encoder import CSREncoder
    from csr_index.index import CSRIndex

Model = Any
"""What the Qdrant functions take for the adapter: a :class:`CSRIndex` or a bare :class:`CSREncoder`."""

MAX_SPARSE_INDEX = (1 << 32) - 1
MAX_POINT_ID = (1 << 63) - 1
VALIDATE_CHUNK = 1 << 16

SparseRow = tuple[list[int], list[float]]
"""One sparse vector as qdrant-client and qdrant-edge take it: (indices, values)."""


def encoder_of(model: Model) -> "CSREncoder":
    """The trained :class:`CSREncoder` of a CSRIndex or CSREncoder (TypeError / NotTrainedError otherwise)."""
    from csr_index.encoder import CSREncoder
    from csr_index.index import CSRIndex

    if isinstance(model, CSRIndex):
        encoder = model.encoder
    elif isinstance(model, CSREncoder):
        encoder = model
    else:
        raise TypeError(f"expected a CSRIndex or a CSREncoder (the adapter), got {type(model).__name__}")
    if not encoder.is_trained:
        raise NotTrainedError(f"this {type(model).__name__} is not trained yet: train it (or load a trained one) first")
    return encoder


def index_of(model: Model) -> "CSRIndex | None":
    """``model`` when it is a CSRIndex (documents held locally), else None."""
    from csr_index.index import CSRIndex

    return model if isinstance(model, CSRIndex) else None


def check_trained(model: Model) -> None:
    """NotTrainedError unless ``model`` (a CSRIndex or CSREncoder) is trained."""
    encoder_of(model)


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    return name


def _check_point_ids(ids: Any, n: int) -> np.ndarray:
    """Qdrant point ids from int64 index ids: integers, unique, 0 <= id < 2**63."""
    arr = np.asarray(ids)
    if arr.ndim == 1:
        if len(arr) != n:
            raise ValueError(f"there are {n} codes but {len(arr)} point ids")
        if arr.dtype == object:  # Python ints beyond int64, or mixed types
            bad = [v for v in arr if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
            if bad:
                raise TypeError(
                    f"point ids must be integers (Qdrant u64; UUIDs are not supported here), got {bad[0]!r}"
                )
        if arr.size and (arr.dtype == object or np.issubdtype(arr.dtype, np.unsignedinteger)):
            top = int(arr.max())
            if top > MAX_POINT_ID:
                raise ValueError(f"point ids must be below 2**63 (they are returned as int64), got {top}")
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


def sparse_rows(indices: np.ndarray, values: np.ndarray, normalize: bool = False) -> list[SparseRow]:
    """(n, k) slots as one (indices, values) pair of Python lists per row, empty for an all-zero code."""
    indptr, idx, val = _csr_rows(indices, values, normalize)
    idx_l, val_l = idx.tolist(), val.tolist()
    bounds = indptr.tolist()
    return [(idx_l[a:b], val_l[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


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


def validate_codes(codes: SparseCodes, ids: Any, normalize: bool) -> tuple[np.ndarray, int]:
    """Check every code and its point id; returns (point ids int64, number of non-empty codes)."""
    if not isinstance(codes, SparseCodes):
        raise TypeError(f"codes must be csr_index.SparseCodes, got {type(codes).__name__}")
    point_ids = _check_point_ids(ids, codes.n)
    if not np.issubdtype(codes.indices.dtype, np.integer):
        raise TypeError(f"code indices must be integers, got dtype {codes.indices.dtype}")
    if not (np.issubdtype(codes.values.dtype, np.floating) or np.issubdtype(codes.values.dtype, np.integer)):
        raise TypeError(f"code values must be real numbers, got dtype {codes.values.dtype}")
    nonempty = 0
    for s in range(0, codes.n, VALIDATE_CHUNK):
        e = min(codes.n, s + VALIDATE_CHUNK)
        indptr, idx, val = _csr_rows(codes.indices[s:e], codes.values[s:e], normalize=False)
        _validate_rows(indptr, idx, val, point_ids[s:e], codes.h, s)
        nonempty += int((np.diff(indptr) > 0).sum())
        if normalize:  # the L2 norm can overflow float32 even when every value is finite
            norms = SparseCodes(codes.indices[s:e], codes.values[s:e], codes.h).norms()
            bad = np.flatnonzero(~np.isfinite(norms))
            if bad.size:
                raise ValueError(
                    f"code of point id {int(point_ids[s + bad[0]])} (row {s + bad[0]}): its L2 norm overflows "
                    "float32, so it cannot be normalised"
                )
    return point_ids, nonempty


def check_dense(vectors: Any, n: int) -> np.ndarray:
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
