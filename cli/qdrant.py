"""``csr-index export-qdrant`` and ``csr-index search-qdrant``: the Qdrant bridge on the command line.

Both take exactly one target: ``--url`` (a Qdrant server or cluster, REST or with
``--grpc``), ``--path`` (qdrant-client local mode, a directory) or ``--edge``
(an embedded qdrant-edge shard, a directory). ``export-qdrant`` uploads a built index, or
streams a Parquet file of embeddings through an adapter (``--adapter``). ``search-qdrant``
needs only the adapter (an index directory, with or without documents) and prints what
``csr-index search`` prints (TSV query, rank, id, score; or ``--json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from csr_index import CSREncoder, CSRIndex
from csr_index.cli.common import echo_results, load_index, query_keys, read_vectors, setup_logging
from csr_index.errors import IndexFormatError

__all__ = ["export_qdrant", "search_qdrant"]

_SHARED_TARGET_HELP = "Exactly one of --url, --path, --edge."
_STORAGE_CHOICES = {"sparse": ["float32", "float16", "uint8"], "dense": ["float32", "float16"],
                    "quantization": ["none", "int8", "binary"]}


def _is_index_dir(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()


def _load_encoder(path: str, quiet: bool) -> CSREncoder:
    try:
        return CSREncoder.load(path, progress=not quiet)
    except IndexFormatError as exc:
        raise click.ClickException(str(exc)) from exc


def _integration() -> Any:
    try:
        from csr_index.integrations import qdrant
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise click.ClickException(str(exc)) from exc
    return qdrant


def _open_target(
    url: str | None, path: str | None, edge: str | None, collection: str | None, api_key: str | None,
    grpc: bool, timeout: int | None, *, edge_options: dict[str, Any],
) -> tuple[Any, str | None, Callable[[], None]]:
    """(client or EdgeCollection, collection name, close) for the one target given."""
    given = [name for name, value in (("--url", url), ("--path", path), ("--edge", edge)) if value is not None]
    if len(given) != 1:
        raise click.UsageError(f"give exactly one of --url, --path or --edge (got {', '.join(given) or 'none'})")
    cq = _integration()
    if edge is not None:
        if collection is not None:
            raise click.UsageError("--collection does not apply to --edge (a qdrant-edge shard is one collection)")
        try:
            shard = cq.EdgeCollection(edge, **edge_options)
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        return shard, None, shard.close
    if not collection:
        raise click.UsageError(f"{given[0]} needs --collection NAME")
    try:
        from qdrant_client import QdrantClient
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise click.ClickException(f"qdrant-client is not installed: {cq.INSTALL_HINT} ({exc})") from exc
    if url is not None:  # a malformed URL, or a local directory another client holds, is a clean error
        client = _fail_cleanly(lambda: QdrantClient(url=url, api_key=api_key, prefer_grpc=grpc, timeout=timeout))
    else:
        client = _fail_cleanly(lambda: QdrantClient(path=path))
    return client, collection, client.close


def _target_options(f: Callable) -> Callable:
    options = [
        click.option("--url", default=None,
                     help="Qdrant server or cluster URL, e.g. http://host:6333. " + _SHARED_TARGET_HELP),
        click.option("--path", "local_path", type=click.Path(file_okay=False), default=None,
                     help="qdrant-client local mode directory (no server). " + _SHARED_TARGET_HELP),
        click.option("--edge", type=click.Path(file_okay=False), default=None,
                     help="qdrant-edge shard directory (Qdrant's engine in-process). " + _SHARED_TARGET_HELP),
        click.option("--collection", default=None, help="Collection name (with --url or --path)."),
        click.option("--api-key", envvar="QDRANT_API_KEY", default=None, help="API key (or $QDRANT_API_KEY)."),
        click.option("--grpc", is_flag=True, help="Talk gRPC to the server (port 6334) instead of REST."),
        click.option("--timeout", type=int, default=None, help="Request timeout in seconds."),
        click.option("--vector-name", default="csr", show_default=True, help="Name of the sparse vector."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _fail_cleanly(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (ValueError, TypeError, KeyError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # connection errors of qdrant-client (ResponseHandlingException, gRPC…)
        if type(exc).__module__.startswith(("qdrant_client", "grpc", "httpx", "httpcore", "urllib3")):
            raise click.ClickException(f"Qdrant request failed: {exc}") from exc
        raise


@click.command(name="export-qdrant")
@click.argument("source", type=click.Path(exists=True))
@_target_options
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="Adapter (any index directory) that encodes a Parquet SOURCE; only its weights are read.")
@click.option("--column", default="embedding", show_default=True, help="Vector column of a Parquet SOURCE.")
@click.option("--id-column", default="id", show_default=True,
              help="Parquet SOURCE: integer ids become point ids; string ids (or none) -> row numbers, the string "
                   "stored in the payload field --key-field.")
@click.option("--key-field", default="key", show_default=True, help="Payload field for string ids / index keys.")
@click.option("--read-batch-size", default=4096, show_default=True, help="Parquet rows encoded per batch.")
@click.option("--k-doc", type=int, default=None, help="Latents per stored code (Parquet SOURCE; default k).")
@click.option("--payload", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Index SOURCE: Parquet file whose columns become point payloads (e.g. the corpus: id, text).")
@click.option("--payload-columns", default=None,
              help="Comma-separated payload columns (default: every non-vector column; 'none': no payload).")
@click.option("--join-column", default="id", show_default=True,
              help="Index SOURCE: payload column matched to the index's ids (integers) or keys (strings).")
@click.option("--dense/--no-dense", default=False, show_default=True,
              help="Also upload the dense vectors (server-side re-rank, --hybrid search).")
@click.option("--sparse-datatype", type=click.Choice(_STORAGE_CHOICES["sparse"]), default=None,
              help="Datatype of the stored code values (new collection; default Qdrant's float32).")
@click.option("--dense-datatype", type=click.Choice(_STORAGE_CHOICES["dense"]), default=None,
              help="Datatype of the stored dense vectors (new collection; default float32).")
@click.option("--quantization", type=click.Choice(_STORAGE_CHOICES["quantization"]), default="none",
              show_default=True, help="Qdrant quantization of the dense vectors, kept in RAM.")
@click.option("--dense-on-disk/--dense-in-memory", default=None, help="Dense originals on disk (mmap) or in RAM.")
@click.option("--dense-hnsw/--no-dense-hnsw", default=None,
              help="Build Qdrant's HNSW graph over the dense vectors (for --hybrid search); default: none "
                   "(hnsw m=0), as re-ranking needs no graph and building it is most of the indexing time.")
@click.option("--idf/--no-idf", default=False, show_default=True, help="Qdrant's IDF modifier on the codes.")
@click.option("--batch-size", default=256, show_default=True, help="Points per upload request.")
@click.option("--parallel", default=1, show_default=True, help="Upload requests in flight (remote servers).")
@click.option("--shard-number", type=int, default=None, help="Shards of a new collection (cluster).")
@click.option("--replication-factor", type=int, default=None, help="Replicas of each shard (cluster).")
@click.option("--write-consistency-factor", type=int, default=None, help="Replicas that must ack a write.")
@click.option("--on-disk/--in-memory", default=None, help="Sparse index on disk (mmap) or in RAM (default: Qdrant's).")
@click.option("--recreate", is_flag=True, help="Drop the collection first (not with --edge).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip points already in the collection (re-run after an interruption).")
@click.option("--metadata/--no-metadata", default=True, show_default=True,
              help="Record the adapter fingerprint in the collection metadata (checked by search-qdrant).")
@click.option("--quiet", is_flag=True, help="No progress bar or log lines.")
def export_qdrant(source, url, local_path, edge, collection, api_key, grpc, timeout, vector_name, adapter, column,
                  id_column, key_field, read_batch_size, k_doc, payload, payload_columns, join_column, dense,
                  sparse_datatype, dense_datatype, quantization, dense_on_disk, dense_hnsw, idf, batch_size, parallel,
                  shard_number, replication_factor, write_consistency_factor, on_disk, recreate, resume, metadata,
                  quiet):
    """Upload SOURCE to a Qdrant collection (created if needed); re-run to resume.

    SOURCE is a built index directory (its codes are uploaded), or a Parquet file or directory
    of Parquet files of embeddings, streamed in batches and encoded by --adapter."""
    setup_logging(quiet)
    streaming = not _is_index_dir(source)
    if streaming and adapter is None:
        raise click.UsageError("a Parquet SOURCE needs --adapter MODEL (an index directory holding the adapter)")
    if not streaming and adapter is not None:
        raise click.UsageError("SOURCE is an index directory: its own adapter is used; drop --adapter")
    if streaming and payload is not None:
        raise click.UsageError("--payload applies to an index SOURCE; a Parquet SOURCE is its own payload "
                               "(choose columns with --payload-columns)")
    model = _load_encoder(adapter, quiet) if streaming else load_index(
        source, quiet, if_empty=f"nothing to export; export a Parquet file with it: FILE --adapter {source}")
    columns = None
    if payload_columns is not None:
        columns = [] if payload_columns.strip().lower() == "none" else [
            c.strip() for c in payload_columns.split(",") if c.strip()]
    quantization = None if quantization == "none" else quantization
    storage = {"sparse_datatype": sparse_datatype, "dense_datatype": dense_datatype, "quantization": quantization,
               "dense_on_disk": dense_on_disk, "dense_hnsw": dense_hnsw}
    target, name, close = _open_target(
        url, local_path, edge, collection, api_key, grpc, timeout,
        edge_options={"vector_name": vector_name, "idf": idf, "dense_size": model.d if dense else None, **storage},
    )
    cq = _integration()
    common = dict(vector_name=vector_name, dense=dense, idf=idf, batch_size=batch_size, parallel=parallel,
                  shard_number=shard_number, replication_factor=replication_factor,
                  write_consistency_factor=write_consistency_factor, on_disk=on_disk, recreate=recreate,
                  resume=resume, store_metadata=metadata, progress=not quiet, **storage)
    try:
        if streaming:
            report = _fail_cleanly(lambda: cq.export_parquet(
                model, source, target, name, column=column, id_column=id_column or None, payload_columns=columns,
                keys_field=key_field or None, k_doc=k_doc, read_batch_size=read_batch_size, **common))
        else:
            report = _fail_cleanly(lambda: cq.export(
                model, target, name, payload=payload if columns != [] else None, payload_columns=columns or None,
                join=join_column, keys_field=key_field or None, **common))
    finally:
        close()
    click.echo(f"exported {report}")


@click.command(name="search-qdrant")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@_target_options
@click.option("--topk", default=10, show_default=True)
@click.option("--query-k", "query_k", type=int, default=None, help="Latents of each query's code (default: k).")
@click.option("--score", type=click.Choice(["code", "asymmetric"]), default="code", show_default=True,
              help="code: Qdrant's ranking as is; asymmetric: re-score Qdrant's candidates (needs a full index).")
@click.option("--rerank", type=int, default=None,
              help="Re-rank this many candidates exactly (default: 3 * max(100, 10*topk): a code x code shortlist; 0 when no re-ranking is possible).")
@click.option("--rerank-on", type=click.Choice(["auto", "server", "local"]), default="auto", show_default=True,
              help="server: Qdrant re-scores by the stored dense vectors; local: the index's originals; "
                   "auto: local for a full index with originals, else server when the collection has dense vectors.")
@click.option("--adapter-only", is_flag=True, help="Use only MODEL's adapter, even if it holds documents.")
@click.option("--candidates", type=int, default=None, help="Points Qdrant returns per query (default: auto).")
@click.option("--hybrid", is_flag=True,
              help="Fuse with dense search (RRF); needs export-qdrant --dense (and --dense-hnsw, else the dense "
                   "side scans every point).")
@click.option("--rrf-k", default=2, show_default=True, help="RRF constant for --hybrid.")
@click.option("--quantization-rescore/--no-quantization-rescore", default=None,
              help="Server re-rank over quantized vectors: re-score with the originals (default: Qdrant's).")
@click.option("--oversampling", type=float, default=None,
              help="Quantization oversampling for the server re-rank (with int8, 3 keeps the recall of float32).")
@click.option("--key-field", default="key", show_default=True,
              help="Payload field printed instead of the point id when MODEL holds no documents.")
@click.option("--column", default="embedding", show_default=True)
@click.option("--id-column", default="id", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query instead of TSV.")
@click.option("--quiet", is_flag=True)
def search_qdrant(model_path, queries, url, local_path, edge, collection, api_key, grpc, timeout, vector_name,
                  topk, query_k, score, rerank, rerank_on, adapter_only, candidates, hybrid, rrf_k,
                  quantization_rescore, oversampling, key_field, column, id_column, as_json, quiet):
    """Search the Qdrant collection exported with MODEL's adapter, with the vectors in QUERIES.

    MODEL is an index directory; one without documents (``CSREncoder.save``) is just the adapter,
    which is all a search needs when the collection holds the dense vectors."""
    setup_logging(quiet)
    try:
        ntotal = int(CSRIndex.describe(model_path).get("ntotal") or 0)
    except IndexFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    full = ntotal > 0 and not adapter_only
    model = load_index(model_path, quiet) if full else _load_encoder(model_path, quiet)
    emb = read_vectors(queries, column, id_column)
    if edge is not None and not Path(edge).exists():
        raise click.ClickException(f"no qdrant-edge shard at {edge}")
    target, name, close = _open_target(
        url, local_path, edge, collection, api_key, grpc, timeout,
        edge_options={"vector_name": vector_name, "create": False},
    )
    cq = _integration()
    try:
        D, I = _fail_cleanly(lambda: cq.search(
            model, target, name, emb.vectors, topk, query_k=query_k, score=score, rerank=rerank, rerank_on=rerank_on,
            candidates=candidates, hybrid=hybrid, rrf_k=rrf_k, quantization_rescore=quantization_rescore,
            oversampling=oversampling, vector_name=vector_name,
        ))
        labels = None if full else _fail_cleanly(
            lambda: cq.fetch_payload(target, name, I, key_field, vector_name=vector_name))
    finally:
        close()
    if full:  # (a point the index lacks, e.g. removed from it since the export, is a clean error)
        _fail_cleanly(lambda: echo_results(model, emb, D, I, as_json))
        return
    for qkey, drow, irow, lrow in zip(query_keys(emb), D, I, labels):
        hits = [(str(lab) if lab is not None else str(i), float(sc)) for i, lab, sc in zip(irow, lrow, drow) if i >= 0]
        if as_json:
            click.echo(json.dumps({"query": qkey, "results": [{"id": i, "score": sc} for i, sc in hits]}))
        else:
            for rank, (lab, sc) in enumerate(hits, 1):
                click.echo(f"{qkey}\t{rank}\t{lab}\t{sc:.6f}")
