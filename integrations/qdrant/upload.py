"""Uploading codes: :func:`export` (a CSRIndex's codes, keys, payloads, dense vectors) and
:func:`export_codes` (any codes); :mod:`.stream` encodes and uploads a Parquet file in batches. Everything is validated before the first request; a
re-run resumes (points already present are skipped by id); transient errors are retried;
remote servers get several requests in flight."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from csr_index.progress import progress_bar
from csr_index.codes import SparseCodes

from .layout import Storage
from .metadata import DEFAULT_DENSE_VECTOR_NAME, DEFAULT_VECTOR_NAME, index_metadata
from .sending import ExportReport, QdrantExportError, check_upload_options, retrying, run_all  # noqa: F401
from .payload import check_payload_dicts, check_payload_table, is_dict_sequence, payload_batch, payload_table
from .targets import Target, open_target
from .validation import check_dense, check_name, index_of, sparse_rows, validate_codes

if TYPE_CHECKING:
    from csr_index.index import CSRIndex

__all__ = ["ExportReport", "QdrantExportError", "export", "export_codes"]

log = logging.getLogger(__name__)


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
    sparse_datatype: str | None = None,
    dense_datatype: str | None = None,
    quantization: str | None = None,
    dense_on_disk: bool | None = None,
    dense_hnsw: bool | None = None,
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
    keys_field: payload field that receives the index's string keys (None: don't; kept when
        the payload already has a column of that name), where ``fetch_payload`` looks them up.
    dense: True uploads ``index.vectors()`` (needs store_vectors=True), an (n, d)
        array uploads those vectors (prepared as the index prepares queries), as a
        dense vector ``dense_vector_name`` (dot product) for hybrid search.
    idf: create the sparse vector with Qdrant's IDF modifier (scores then differ from
        CSRIndex's; CSR weights are learned, so the default is off).
    sparse_datatype, dense_datatype, quantization, dense_on_disk: how a new collection stores
        the codes ("float32" / "float16" / "uint8") and the dense vectors ("float32" /
        "float16"; quantization "int8" / "binary", kept in RAM; originals on disk): see
        :mod:`csr_index.integrations.qdrant.layout`. An existing collection must match.
    dense_hnsw: whether Qdrant builds an HNSW graph over the dense vectors (new collection).
        Default: no graph (the vector's ``hnsw_config`` has ``m = 0``), since server-side
        re-ranking never walks it and building it is most of the indexing time; True for
        hybrid search or dense-only queries, whose dense search is otherwise a full scan.
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
    if index_of(index) is None:
        raise TypeError(f"export() uploads the codes of a built CSRIndex, got {type(index).__name__}; "
                        "to encode and upload vectors with an adapter alone use export_parquet(encoder, path, ...)")
    index.encoder.require_trained()
    ids = np.asarray(index.ids, dtype=np.int64)
    n = len(ids)
    dense_vectors = None
    if dense is True:
        dense_vectors = index.vectors()  # ValueError when store_vectors=False
    elif dense is not False and dense is not None:
        dense_vectors = index.prepare(dense, "dense vectors")
        if len(dense_vectors) != n:
            raise ValueError(f"dense has {len(dense_vectors)} vectors but the index holds {n} points")
    keys = None
    if keys_field is not None or (payload is not None and not is_dict_sequence(payload)):
        raw_keys = index.keys_of(ids)
        keys = raw_keys if any(k is not None for k in raw_keys) else None
    table: pa.Table | None = None
    dicts: list[dict] | None = None
    if payload is not None:
        if is_dict_sequence(payload):
            dicts = check_payload_dicts(payload, n)
        else:
            table = payload_table(payload, payload_columns, join, ids, keys)
    if keys_field is not None and keys is not None:
        key_list = keys.tolist()
        if dicts is not None:
            dicts = [d if keys_field in d else {keys_field: k, **d} for d, k in zip(dicts, key_list)]
        elif table is None:
            table = pa.table({keys_field: pa.array(key_list, type=pa.string())})
        elif keys_field not in table.column_names:  # even when a string join column holds them too
            table = table.append_column(keys_field, pa.array(key_list, type=pa.string()))
    meta = index_metadata(index, vector_name, dense_vector_name if dense_vectors is not None else None)
    return export_codes(
        index.code_vectors(), ids, client, collection_name,
        normalize=False,  # code_vectors() are already weighted and, under cosine, normalised
        payload=table if table is not None else dicts,
        dense_vectors=dense_vectors,
        vector_name=vector_name, dense_vector_name=dense_vector_name, idf=idf,
        sparse_datatype=sparse_datatype, dense_datatype=dense_datatype, quantization=quantization,
        dense_on_disk=dense_on_disk, dense_hnsw=dense_hnsw, batch_size=batch_size, parallel=parallel,
        shard_number=shard_number, replication_factor=replication_factor,
        write_consistency_factor=write_consistency_factor, on_disk=on_disk,
        collection_options=collection_options, recreate=recreate, resume=resume, wait=wait,
        max_retries=max_retries, metadata=meta if store_metadata else None, progress=progress,
    )


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
    sparse_datatype: str | None = None,
    dense_datatype: str | None = None,
    quantization: str | None = None,
    dense_on_disk: bool | None = None,
    dense_hnsw: bool | None = None,
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
    vector_name = check_name(vector_name, "vector_name")
    dense_vector_name = check_name(dense_vector_name, "dense_vector_name")
    if dense_vectors is not None and dense_vector_name == vector_name:
        raise ValueError(f"the dense and sparse vectors need different names, both are {vector_name!r}")
    batch_size, parallel = check_upload_options(
        batch_size, parallel, max_retries, ("shard_number", shard_number), ("replication_factor", replication_factor),
        ("write_consistency_factor", write_consistency_factor))
    storage = Storage(sparse_datatype, dense_datatype, quantization, dense_on_disk, dense_hnsw)
    if storage.dense_options and dense_vectors is None:
        raise ValueError("dense_datatype, quantization, dense_on_disk and dense_hnsw apply to dense vectors: "
                         "pass dense vectors")

    # ---- validate everything before the first request
    point_ids, nonempty = validate_codes(codes, ids, normalize)
    n = codes.n
    dense_arr = check_dense(dense_vectors, n) if dense_vectors is not None else None
    if isinstance(payload, pa.Table):
        if payload.num_rows != n:
            raise ValueError(f"payload table has {payload.num_rows} rows but there are {n} points")
        payload = check_payload_table(payload)
    elif payload is not None:
        payload = check_payload_dicts(payload, n)
    if nonempty < n:
        log.info("%d of %d codes are empty (all zero): stored, but never a search result", n - nonempty, n)

    target = open_target(client, collection_name, vector_name, dense_vector_name if dense_arr is not None else None,
                         wait=bool(wait))
    where = target.describe()
    if parallel > 1 and target.local:
        log.info("parallel=%d ignored: local mode and qdrant-edge upload from one thread", parallel)
        parallel = 1
    create = {"shard_number": shard_number, "replication_factor": replication_factor,
              "write_consistency_factor": write_consistency_factor, "on_disk": on_disk,
              **dict(collection_options or {})}
    target.prepare(idf=bool(idf), dense_size=dense_arr.shape[1] if dense_arr is not None else None,
                   metadata=dict(metadata) if metadata else None, recreate=recreate, create=create, storage=storage)

    before = target.count() if resume else 0
    check_existing = before > 0
    if check_existing:
        log.info("%s already holds %d points: resuming (only missing ids are sent)", where, before)
    log.info("exporting %d codes to %s in batches of %d", n, where, batch_size)

    def run_batch(start: int) -> tuple[int, int]:
        """Upload rows [start, start + batch_size) that are missing; returns (sent, skipped)."""
        stop = min(n, start + batch_size)
        rows = np.arange(start, stop)
        if check_existing:
            present = retrying(lambda: target.existing(point_ids[rows].tolist()), max_retries,
                                f"checking which of rows {start}..{stop - 1} exist", where)
            if present:
                rows = rows[~np.isin(point_ids[rows], np.fromiter(present, np.int64, len(present)))]
        if len(rows):
            batch = (point_ids[rows].tolist(), sparse_rows(codes.indices[rows], codes.values[rows], normalize),
                     np.asarray(dense_arr[rows], dtype=np.float32).tolist() if dense_arr is not None else None,
                     payload_batch(payload, rows))
            retrying(lambda: target.upsert(*batch), max_retries, f"uploading rows {start}..{stop - 1}", where)
        skipped = stop - start - len(rows)
        log.debug("batch at row %d: %d sent, %d already there", start, len(rows), skipped)
        return len(rows), skipped

    uploaded = skipped = 0
    with progress_bar(total=n, show=progress, unit="pt", desc=f"export to {where}") as bar:
        for sent, skip in run_all(run_batch, range(0, n, batch_size), parallel):
            uploaded += sent
            skipped += skip
            bar.update(sent + skip)
    target.flush()
    after = target.count()
    report = ExportReport(where, n, uploaded, skipped, after, time.perf_counter() - started)
    if after < n and wait:
        log.warning("%s holds %d points after exporting %d: some are missing; re-run the export", where, after, n)
    elif after > n:
        log.warning("%s holds %d points, %d more than this export: points from elsewhere are in it",
                    where, after, after - n)
    log.info("exported %s", report)
    return report
