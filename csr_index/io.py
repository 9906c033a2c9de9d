"""Reading dense embeddings (and their ids) from Parquet or .npy files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Embeddings", "read_embeddings"]


@dataclass
class Embeddings:
    """Vectors read from a file, with optional integer ids or string keys per row."""

    vectors: np.ndarray
    ids: np.ndarray | None = None
    keys: list[str] | None = None
    table: pa.Table | None = None
    """The other columns of a Parquet source (e.g. text), for payloads."""


def read_embeddings(
    path: str | os.PathLike, column: str = "embedding", id_column: str | None = "id"
) -> Embeddings:
    """Read a (n, d) float32 matrix from a ``.npy`` file or a Parquet column.

    The Parquet column must be a fixed-size or variable list of floats (all rows the
    same length). ``id_column``, when present in the file, gives ids: integer
    columns become int64 ids, string columns become keys. A missing ``id_column``
    named explicitly is an error; the default ``"id"`` is simply skipped when absent.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{p} is not a plain numeric .npy array: {exc}") from exc
        return Embeddings(np.asarray(arr))
    if p.suffix not in (".parquet", ".pq"):
        raise ValueError(f"unsupported file type {p.suffix!r} for {p}: use .parquet or .npy")
    try:
        schema = pq.read_schema(p)
    except pa.ArrowException as exc:
        raise ValueError(f"{p} is not a readable Parquet file: {exc}") from exc
    names = schema.names
    if column not in names:
        raise ValueError(f"{p} has no column {column!r}; its columns are {names}")
    if id_column is not None and id_column not in names:
        if id_column != "id":
            raise ValueError(f"{p} has no id column {id_column!r}; its columns are {names}")
        id_column = None
    table = pq.read_table(p)
    vectors = _list_column_to_matrix(table.column(column), column)
    ids = keys = None
    if id_column is not None:
        col = table.column(id_column)
        if pa.types.is_integer(col.type):
            ids = col.to_numpy().astype(np.int64)
        else:
            keys = [str(v) for v in col.to_pylist()]
    rest = table.drop_columns([column])
    return Embeddings(vectors, ids=ids, keys=keys, table=rest)


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
