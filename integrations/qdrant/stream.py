"""Streaming export: :func:`export_parquet` reads embeddings from Parquet in batches, encodes them
with an adapter (a :class:`CSREncoder`, or a CSRIndex's) and uploads codes, payloads and optionally
the dense vectors, one batch at a time: memory holds one batch, whatever the file's size."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from csr_index.io import id_column_kind, read_id_column
from csr_index.progress import progress_bar
from csr_index.validation import check_positive

from .layout import Storage
from .metadata import DEFAULT_DENSE_VECTOR_NAME, DEFAULT_VECTOR_NAME, index_metadata
from .payload import _is_vector_column, _json_type, check_payload_table
from .sending import ExportReport, check_upload_options, retrying, run_all
from .targets import Target, open_target
from .validation import Model, _check_point_ids, check_name, encoder_of, sparse_rows, validate_codes

__all__ = ["export_parquet"]

log = logging.getLogger(__name__)

READ_BUFFER = 1 << 20


def _files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The Parquet files of ``source``: one file, a directory (its ``*.parquet``, sorted), or a list."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if not files:
                raise FileNotFoundError(f"no *.parquet files in {path}")
            return files
        paths = [path]
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise ValueError("no Parquet files given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"Parquet file not found: {p}")
    return paths


def _plan_columns(files: list[Path], column: str, id_column: str | None, d: int,
                  payload_columns: Sequence[str] | None, keys_field: str | None) -> tuple[str, list[str], int]:
    """Check every file's schema; returns (id kind "ids" / "keys" (see
    :func:`csr_index.io.id_column_kind`) / "row", payload columns, total rows)."""
    kind, total, first = "row", 0, None
    for path in files:
        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path} is not a readable Parquet file: {exc}") from exc
        schema = meta.schema.to_arrow_schema()
        total += meta.num_rows
        if column not in schema.names:
            raise ValueError(f"{path} has no column {column!r}; its columns are {schema.names}")
        t = schema.field(column).type
        if not (_is_vector_column(t) or (pa.types.is_list(t) and pa.types.is_integer(t.value_type))):
            raise ValueError(f"{path}: column {column!r} has type {t}; expected a list of floats per row")
        if pa.types.is_fixed_size_list(t) and t.list_size != d:
            raise ValueError(f"{path}: column {column!r} holds {t.list_size}-d vectors, the adapter expects d={d}")
        if id_column is not None and id_column in schema.names:
            it = schema.field(id_column).type
            k = id_column_kind(it)
            if k is None:
                raise ValueError(f"{path}: id column {id_column!r} has type {it}; expected integers or strings")
        elif id_column is not None and id_column != "id":
            raise ValueError(f"{path} has no id column {id_column!r}; its columns are {schema.names}")
        else:
            k = "row"
        if first is None:
            kind, first = k, schema
        elif k != kind or schema.names != first.names:
            raise ValueError(f"{path} does not have the columns and id type of {files[0]}")
    assert first is not None
    if payload_columns is None:
        wanted = [f.name for f in first if f.name != column and not _is_vector_column(f.type)
                  and not (f.name == id_column and (kind == "ids" or keys_field is not None))]
    else:
        wanted = list(payload_columns)
        missing = [c for c in wanted if c not in first.names]
        if missing:
            raise ValueError(f"payload columns {missing} are not in {files[0]}; its columns are {first.names}")
    for name in wanted:
        if not _json_type(first.field(name).type):
            raise ValueError(f"payload column {name!r} has Arrow type {first.field(name).type}, which has no JSON "
                             "form in a Qdrant payload; leave it out of payload_columns")
    if kind == "keys" and keys_field is not None and keys_field in wanted:
        raise ValueError(f"keys_field={keys_field!r} would overwrite the payload column of that name; rename one")
    return kind, wanted, total


def _vectors(col: pa.Array, name: str, d: int, row0: int) -> np.ndarray:
    """(n, d) float32 from a list column batch; ValueError naming the absolute row of a bad vector."""
    if col.null_count:
        bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"row {row0 + bad}: column {name!r} is null")
    if not pa.types.is_fixed_size_list(col.type):
        lengths = np.diff(col.offsets.to_numpy())
        if (lengths != d).any():
            bad = int(np.flatnonzero(lengths != d)[0])
            raise ValueError(f"row {row0 + bad}: column {name!r} has {lengths[bad]} values, expected d={d}")
    x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), d).astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"row {row0 + int(bad_rows[0])}: the vector in {name!r} has a NaN or inf value")
    return x


def export_parquet(
    model: Model,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    client: Target,
    collection_name: str | None = None,
    *,
    column: str = "embedding",
    id_column: str | None = "id",
    payload_columns: Sequence[str] | None = None,
    keys_field: str | None = "key",
    k_doc: int | None = None,
    dense: bool = False,
    vector_name: str = DEFAULT_VECTOR_NAME,
    dense_vector_name: str = DEFAULT_DENSE_VECTOR_NAME,
    idf: bool = False,
    sparse_datatype: str | None = None,
    dense_datatype: str | None = None,
    quantization: str | None = None,
    dense_on_disk: bool | None = None,
    dense_hnsw: bool | None = None,
    read_batch_size: int = 4096,
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
    """Encode the embeddings of Parquet ``source`` with the adapter of ``model`` (a CSREncoder or
    CSRIndex) and upload them as points of a Qdrant collection (or an :class:`EdgeCollection`),
    ``read_batch_size`` rows at a time: only one batch of vectors and codes is ever in memory.

    source: a Parquet file, a directory of ``*.parquet`` files (sorted by name) or a list of
        files, all with the same columns; ``column`` holds the vectors (lists of d numbers).
    id_column: integer column -> point ids (unique, 0 <= id < 2**63). Strings (or no such
        column; None = always) -> point id = row number across the files, in order, and a
        string id is stored in the payload field ``keys_field`` (``fetch_payload`` maps ids
        back). Row-number ids are deterministic only for the same files in the same order.
    payload_columns: columns stored as payload; default every column that is not a vector and
        not the id column (the ids are the point ids or ``keys_field``); ``[]``: none.
    k_doc: latents per stored code (default the adapter's k). dense: also upload the prepared
        vectors (L2-normalised under cosine) as the dense vector ``dense_vector_name``, which
        server-side re-ranking (``search(..., rerank_on="server")``) and hybrid search need.
    The layout and cluster options, ``resume``, ``wait`` and ``max_retries`` are as in
    :func:`export`. Each batch is validated (ids, finite non-zero vectors of size d, codes,
    JSON payloads) before any of it is sent, the first one before the collection is created;
    a bad row stops the export with ValueError naming it, and the batches before it stay
    (re-run after fixing the file: it resumes). Ids duplicated across batches overwrite
    each other (or are skipped on resume); the final count then falls short, with a warning.
    """
    started = time.perf_counter()
    encoder = encoder_of(model)
    vector_name = check_name(vector_name, "vector_name")
    dense_vector_name = check_name(dense_vector_name, "dense_vector_name")
    if dense and dense_vector_name == vector_name:
        raise ValueError(f"the dense and sparse vectors need different names, both are {vector_name!r}")
    batch_size, parallel = check_upload_options(
        batch_size, parallel, max_retries, ("shard_number", shard_number), ("replication_factor", replication_factor),
        ("write_consistency_factor", write_consistency_factor))
    read_batch_size = check_positive(read_batch_size, "read_batch_size")
    k_doc = encoder.k if k_doc is None else check_positive(k_doc, "k_doc", encoder.k)
    storage = Storage(sparse_datatype, dense_datatype, quantization, dense_on_disk, dense_hnsw)
    if storage.dense_options and not dense:
        raise ValueError("dense_datatype, quantization, dense_on_disk and dense_hnsw apply to dense vectors: "
                         "pass dense=True")
    files = _files(source)
    kind, payload_cols, total = _plan_columns(files, column, id_column, encoder.d, payload_columns, keys_field)
    read_cols = list(dict.fromkeys([column, *payload_cols, *([id_column] if kind != "row" else [])]))

    target = open_target(client, collection_name, vector_name, dense_vector_name if dense else None, wait=bool(wait))
    where = target.describe()
    if parallel > 1 and target.local:
        log.info("parallel=%d ignored: local mode and qdrant-edge upload from one thread", parallel)
        parallel = 1
    create = {"shard_number": shard_number, "replication_factor": replication_factor,
              "write_consistency_factor": write_consistency_factor, "on_disk": on_disk,
              **dict(collection_options or {})}
    meta = index_metadata(encoder, vector_name, dense_vector_name if dense else None, k_doc=k_doc)
    state = {"ready": False, "check": False}

    def start() -> None:
        target.prepare(idf=bool(idf), dense_size=encoder.d if dense else None, metadata=meta if store_metadata else None,
                       recreate=recreate, create=create, storage=storage)
        before = target.count() if resume else 0
        state.update(ready=True, check=before > 0)
        if before:
            log.info("%s already holds %d points: resuming (only missing ids are encoded and sent)", where, before)
        log.info("exporting %d rows of %d Parquet file(s) to %s (read batches of %d, requests of %d)",
                 total, len(files), where, read_batch_size, batch_size)

    uploaded = skipped = 0
    row0 = 0
    with progress_bar(total=total, show=progress, unit="pt", desc=f"export to {where}") as bar:
        for path in files:
            # buffered page reads instead of pre-buffering whole column chunks: a file written as one
            # row group is not loaded at once (pypi-100k: 96 instead of 163 MB to read it)
            reader = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
            for batch in reader.iter_batches(batch_size=read_batch_size, columns=read_cols):
                n = batch.num_rows
                if kind != "row":  # checked: no nulls, integral ids within int64
                    batch_ids, batch_keys = read_id_column(batch.column(id_column), f"{id_column} (rows {row0}..)")
                if kind == "ids":
                    ids = _check_point_ids(batch_ids, n)
                else:
                    ids = np.arange(row0, row0 + n, dtype=np.int64)
                xs = encoder.prepare(_vectors(batch.column(column), column, encoder.d, row0), f"rows {row0}..")
                table = check_payload_table(pa.Table.from_batches([batch]).select(payload_cols))
                if kind == "keys" and keys_field is not None:
                    table = table.append_column(keys_field, pa.array(batch_keys, type=pa.string()))
                if not state["ready"]:
                    start()
                rows = np.arange(n)
                if state["check"]:
                    present = set()
                    for s in range(0, n, batch_size):
                        chunk = ids[s : s + batch_size].tolist()
                        present |= retrying(lambda: target.existing(chunk), max_retries,
                                            f"checking which of rows {row0 + s}.. exist", where)
                    if present:
                        rows = rows[~np.isin(ids, np.fromiter(present, np.int64, len(present)))]
                if len(rows):
                    codes = encoder.weigh(encoder.encode_prepared(xs[rows], k_doc)[0])
                    point_ids, _ = validate_codes(codes, ids[rows], normalize=False)
                    payload = table.take(pa.array(rows)) if table.num_columns else None

                    def send(s: int) -> int:
                        e = min(len(rows), s + batch_size)
                        args = (point_ids[s:e].tolist(), sparse_rows(codes.indices[s:e], codes.values[s:e]),
                                xs[rows[s:e]].tolist() if dense else None,
                                payload.slice(s, e - s).to_pylist() if payload is not None else None)
                        retrying(lambda: target.upsert(*args), max_retries,
                                 f"uploading rows {row0 + int(rows[s])}..{row0 + int(rows[e - 1])}", where)
                        log.debug("batch at row %d: %d sent", row0 + int(rows[s]), e - s)
                        return e - s

                    uploaded += sum(run_all(send, range(0, len(rows), batch_size), parallel))
                skipped += n - len(rows)
                row0 += n
                bar.update(n)
    if not state["ready"]:
        start()
    target.flush()
    after = target.count()
    report = ExportReport(where, total, uploaded, skipped, after, time.perf_counter() - started)
    if after < total and wait:
        log.warning("%s holds %d points after exporting %d rows: ids repeat across batches, or some are missing "
                    "(re-run the export)", where, after, total)
    elif after > total:
        log.warning("%s holds %d points, %d more than these rows: points from elsewhere are in it",
                    where, after, after - total)
    log.info("exported %s", report)
    return report
