"""Point payloads: columns of a Parquet file or Arrow table matched to the points, or one dict per
point; checked to have a JSON form (Qdrant payloads are JSON) before anything is sent."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

Payload = pa.Table | list[dict] | None
"""Checked payloads, one row or dict per point: what ``payload_batch`` reads from."""


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _json_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _json_type(t.value_type)
    if pa.types.is_float16(t):
        return False
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        return True
    if _is_list(t):
        return _json_type(t.value_type)
    if pa.types.is_struct(t):
        return all(_json_type(t.field(i).type) for i in range(t.num_fields))
    return False


def _is_vector_column(t: pa.DataType) -> bool:
    return _is_list(t) and pa.types.is_floating(t.value_type)


def _has_nonfinite(arr: pa.Array) -> bool:
    t = arr.type
    if pa.types.is_dictionary(t):
        return _has_nonfinite(arr.dictionary)
    if pa.types.is_floating(t):
        return bool(pc.any(pc.invert(pc.is_finite(arr))).as_py() or False)
    if _is_list(t):
        return _has_nonfinite(arr.flatten())
    if pa.types.is_struct(t):
        return any(_has_nonfinite(arr.field(i)) for i in range(t.num_fields))
    return False


def is_dict_sequence(payload: Any) -> bool:
    return isinstance(payload, Sequence) and not isinstance(payload, (str, bytes))


def check_payload_table(table: pa.Table) -> pa.Table:
    for name, col in zip(table.column_names, table.columns):
        if not _json_type(col.type):
            raise ValueError(
                f"payload column {name!r} has Arrow type {col.type}, which has no JSON form in a Qdrant "
                "payload; cast it (e.g. to string or float32) or leave it out of payload_columns"
            )
        if any(_has_nonfinite(chunk) for chunk in col.chunks):
            raise ValueError(f"payload column {name!r} contains NaN or inf, which JSON payloads cannot hold")
    return table


def check_payload_dicts(payload: Sequence[Any], n: int) -> list[dict]:
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


def payload_table(
    source: str | os.PathLike | pa.Table,
    columns: Sequence[str] | None,
    join: str | None,
    ids: np.ndarray,
    keys: np.ndarray | None,
) -> pa.Table:
    """``columns`` of a Parquet file or Arrow table (default: every column that is not a float-list,
    i.e. embedding, column), one row per point in the order of ``ids``: matched on ``join`` (an
    integer column against the ids, a string column against the index's ``keys``), or by position
    when the source has no such column."""
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
    return _align(table, wanted, join, ids, keys)


def _align(table: pa.Table, columns: list[str], join: str | None, ids: np.ndarray, keys: np.ndarray | None) -> pa.Table:
    n = len(ids)
    if join is not None and join in table.column_names:
        col = table.column(join).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if col.null_count:
            raise ValueError(f"payload join column {join!r} has {col.null_count} null rows")
        if pa.types.is_integer(col.type):
            src = np.asarray(col.to_numpy(), dtype=np.int64)
            want, what = ids, "ids"
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            if keys is None:
                raise ValueError(
                    f"payload join column {join!r} holds strings but the index has no string keys; "
                    "join on an integer id column or pass join=None to match rows by position"
                )
            src = np.asarray(col.to_pylist(), dtype=object)
            want, what = keys, "keys"
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


def payload_batch(payload: Payload, rows: np.ndarray) -> list[dict] | None:
    """The payload dicts of the given points (rows), or None without payloads."""
    if payload is None:
        return None
    if isinstance(payload, pa.Table):
        return payload.take(pa.array(rows)).to_pylist()
    return [payload[r] for r in rows]
