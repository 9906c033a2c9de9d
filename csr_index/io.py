"""Reading dense embeddings (and their ids) from Parquet or .npy files, whole or in batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .validation import as_int64

__all__ = ["Embeddings", "EmbeddingFile", "read_embeddings", "id_column_kind", "read_id_column"]


@dataclass
class Embeddings:
    """Vectors read from a file, with optional integer ids or string keys per row."""

    vectors: np.ndarray
    ids: np.ndarray | None = None
    keys: list[str] | None = None
    table: pa.Table | None = None
    """The other columns of a Parquet source (e.g. text), for payloads."""

    # the reading interface of EmbeddingFile, so a build can take vectors already in memory
    num_rows = property(lambda self: len(self.vectors))
    dim = property(lambda self: self.vectors.shape[1] if self.vectors.ndim == 2 else 0)

    def rows(self, rows: np.ndarray, batch_rows: int = 0) -> np.ndarray:
        """The vectors of the given rows."""
        return self.vectors[np.asarray(rows, dtype=np.int64)]

    def batches(self, batch_rows: int = 65_536) -> Iterator["Embeddings"]:
        """Consecutive batches of about ``batch_rows`` rows (vectors, ids or keys only)."""
        for s in range(0, len(self.vectors), batch_rows):
            yield Embeddings(self.vectors[s : s + batch_rows],
                             None if self.ids is None else self.ids[s : s + batch_rows],
                             None if self.keys is None else self.keys[s : s + batch_rows])


class EmbeddingFile:
    """A ``.npy`` file or a Parquet column of vectors, read whole, in batches, or by rows.

    The Parquet column must be a fixed-size or variable list of numbers (all rows the same
    length). ``id_column``, when present, gives ids (see :func:`read_id_column`): integer
    columns (and floats with integral values) become int64 ids, string columns become keys;
    nulls and other types are errors. A missing ``id_column`` named explicitly is an error; the
    default ``"id"`` is simply skipped when absent. Batches and row samples hold only their
    own rows in memory (``.npy`` files are memory-mapped).
    """

    def __init__(self, path: str | os.PathLike, column: str = "embedding", id_column: str | None = "id") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no such file: {self.path}")
        self.column = column
        self.id_column = id_column
        if self.path.suffix == ".npy":
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise ValueError(f"{self.path} is not a plain numeric .npy array: {exc}") from exc
            self.num_rows = int(self._array.shape[0]) if self._array.ndim else 0
            self.id_column = None
            return
        if self.path.suffix not in (".parquet", ".pq"):
            raise ValueError(f"unsupported file type {self.path.suffix!r} for {self.path}: use .parquet or .npy")
        try:
            self._parquet = pq.ParquetFile(self.path)
        except pa.ArrowException as exc:
            raise ValueError(f"{self.path} is not a readable Parquet file: {exc}") from exc
        names = self._parquet.schema_arrow.names
        if column not in names:
            raise ValueError(f"{self.path} has no column {column!r}; its columns are {names}")
        if id_column is not None and id_column not in names:
            if id_column != "id":
                raise ValueError(f"{self.path} has no id column {id_column!r}; its columns are {names}")
            self.id_column = None
        self.num_rows = self._parquet.metadata.num_rows

    @property
    def dim(self) -> int:
        """Width of the vectors (from the schema, or the first row of a variable-length list column)."""
        if self.path.suffix == ".npy":
            return int(self._array.shape[1]) if self._array.ndim == 2 else 0
        typ = self._parquet.schema_arrow.field(self.column).type
        if pa.types.is_fixed_size_list(typ):
            return typ.list_size
        first = next(self.batches(1), None)
        return first.vectors.shape[1] if first is not None else 0

    def read(self) -> Embeddings:
        """Every row, with the file's other columns (Parquet) as ``table``."""
        if self.path.suffix == ".npy":
            return Embeddings(np.asarray(self._array, dtype=np.float32) if self._array.dtype.kind == "f"
                              else np.asarray(self._array))
        return self._embeddings(self._parquet.read())

    def batches(self, batch_rows: int = 65_536) -> Iterator[Embeddings]:
        """The file in consecutive batches of about ``batch_rows`` rows (vectors, ids or keys only)."""
        if self.path.suffix == ".npy":
            for start in range(0, self.num_rows, batch_rows):
                yield Embeddings(np.asarray(self._array[start : start + batch_rows]))
            return
        columns = [self.column] + ([self.id_column] if self.id_column else [])
        for batch in self._parquet.iter_batches(batch_size=batch_rows, columns=columns):
            yield self._embeddings(pa.Table.from_batches([batch]), keep_table=False)

    def rows(self, rows: np.ndarray, batch_rows: int = 65_536) -> np.ndarray:
        """The vectors of the given sorted row numbers (e.g. a training sample), read in one pass."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.path.suffix == ".npy":
            return np.asarray(self._array[rows])
        parts, start = [], 0
        for batch in self._parquet.iter_batches(batch_size=batch_rows, columns=[self.column]):
            stop = start + batch.num_rows
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                vectors = _list_column_to_matrix(pa.chunked_array([batch.column(0)]), self.column)
                parts.append(vectors[rows[lo:hi] - start])
            start = stop
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)

    def _embeddings(self, table: pa.Table, keep_table: bool = True) -> Embeddings:
        vectors = _list_column_to_matrix(table.column(self.column), self.column)
        ids = keys = None
        if self.id_column is not None:
            ids, keys = read_id_column(table.column(self.id_column), self.id_column)
        return Embeddings(vectors, ids=ids, keys=keys, table=table.drop_columns([self.column]) if keep_table else None)


def read_embeddings(path: str | os.PathLike, column: str = "embedding", id_column: str | None = "id") -> Embeddings:
    """Read a (n, d) matrix (and ids or keys) from a ``.npy`` file or a Parquet column (see :class:`EmbeddingFile`)."""
    return EmbeddingFile(path, column, id_column).read()


def id_column_kind(typ: pa.DataType) -> str | None:
    """What an id column of type ``typ`` holds: ``"ids"`` (integers, or floats that must hold
    integral values), ``"keys"`` (strings) or None (any other type); dictionaries by their values."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return "ids"
    return "keys" if pa.types.is_string(typ) or pa.types.is_large_string(typ) else None


def read_id_column(col: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray | None, list[str] | None]:
    """An id column as (int64 ids, None) or (None, string keys) (see :func:`id_column_kind`);
    ValueError for nulls, another type, or ids that are not integers within int64."""
    kind = id_column_kind(col.type)
    if kind is None:
        raise ValueError(f"column {name!r} has type {col.type}; ids must be integers (stored as ids) "
                         "or strings (stored as keys)")
    if col.null_count:
        raise ValueError(f"column {name!r} has {col.null_count} null ids")
    if pa.types.is_dictionary(col.type):  # e.g. a pandas categorical
        col = col.cast(col.type.value_type)
    if kind == "keys":
        return None, col.to_pylist()
    try:
        return as_int64(col.to_numpy(), f"column {name!r}"), None
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _list_column_to_matrix(col: pa.ChunkedArray, name: str) -> np.ndarray:
    typ = col.type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise ValueError(f"column {name!r} has type {typ}; expected a list of floats per row")
    if not (pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)):
        raise ValueError(f"column {name!r} holds {typ.value_type}, not numbers")
    arr = col.combine_chunks()
    if arr.null_count:
        raise ValueError(f"column {name!r} has {arr.null_count} null rows")
    if pa.types.is_fixed_size_list(typ):
        width = typ.list_size
    else:
        lengths = np.diff(arr.offsets.to_numpy())
        if lengths.size and (lengths != lengths[0]).any():
            raise ValueError(f"column {name!r} has rows of different lengths ({lengths.min()}..{lengths.max()})")
        width = int(lengths[0]) if lengths.size else 0
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), width).astype(np.float32, copy=False)
