"""``csr-index export-qdrant`` and ``csr-index search-qdrant``: the Qdrant bridge on the command line.

Both take exactly one target: ``--url`` (a Qdrant server or cluster, REST or with
``--grpc``), ``--path`` (qdrant-client local mode, a directory) or ``--edge``
(an embedded qdrant-edge shard, a directory). ``search-qdrant`` prints what
``csr-index search`` prints (TSV query, rank, id, score; or ``--json``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from csr_index.cli.common import echo_results, load_index, read_vectors, setup_logging

__all__ = ["export_qdrant", "search_qdrant"]

_SHARED_TARGET_HELP = "Exactly one of --url, --path, --edge."




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
    if url is not None:
        client = QdrantClient(url=url, api_key=api_key, prefer_grpc=grpc, timeout=timeout)
    else:
        client = QdrantClient(path=path)
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
        if type(exc).__module__.startswith(("qdrant_client", "grpc", "httpx", "httpcore")):
            raise click.ClickException(f"Qdrant request failed: {exc}") from exc
        raise


@click.command(name="export-qdrant")
@click.argument("index_path", type=click.Path(exists=True))
@_target_options
@click.option("--payload", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Parquet file whose columns become point payloads (e.g. the corpus: id, text).")
@click.option("--payload-columns", default=None,
              help="Comma-separated payload columns (default: every non-vector column).")
@click.option("--join-column", default="id", show_default=True,
              help="Payload column matched to the index's ids (integers) or keys (strings).")
@click.option("--dense/--no-dense", default=False, show_default=True,
              help="Also upload the stored dense vectors (for --hybrid search).")
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
def export_qdrant(index_path, url, local_path, edge, collection, api_key, grpc, timeout, vector_name, payload,
                  payload_columns, join_column, dense, idf, batch_size, parallel, shard_number, replication_factor,
                  write_consistency_factor, on_disk, recreate, resume, metadata, quiet):
    """Upload the codes of INDEX_PATH to a Qdrant collection (created if needed); re-run to resume."""
    setup_logging(quiet)
    index = load_index(index_path, quiet)
    columns = [c.strip() for c in payload_columns.split(",") if c.strip()] if payload_columns else None
    target, name, close = _open_target(
        url, local_path, edge, collection, api_key, grpc, timeout,
        edge_options={"vector_name": vector_name, "idf": idf, "dense_size": index.d if dense else None},
    )
    cq = _integration()
    try:
        report = _fail_cleanly(lambda: cq.export(
            index, target, name, vector_name=vector_name, payload=payload, payload_columns=columns,
            join=join_column, dense=dense, idf=idf, batch_size=batch_size, parallel=parallel,
            shard_number=shard_number, replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor, on_disk=on_disk, recreate=recreate,
            resume=resume, store_metadata=metadata, progress=not quiet,
        ))
    finally:
        close()
    click.echo(f"exported {report}")


@click.command(name="search-qdrant")
@click.argument("index_path", type=click.Path(exists=True))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@_target_options
@click.option("--topk", default=10, show_default=True)
@click.option("--query-k", "query_k", type=int, default=None, help="Latents of each query's code (default: the index's k).")
@click.option("--score", type=click.Choice(["code", "asymmetric"]), default="code", show_default=True,
              help="code: Qdrant's ranking as is; asymmetric: re-score Qdrant's candidates.")
@click.option("--rerank", type=int, default=None, help="Re-rank this many exactly (default: auto, as search).")
@click.option("--candidates", type=int, default=None, help="Points Qdrant returns per query (default: auto).")
@click.option("--hybrid", is_flag=True, help="Fuse with dense search (RRF); needs export-qdrant --dense.")
@click.option("--rrf-k", default=2, show_default=True, help="RRF constant for --hybrid.")
@click.option("--column", default="embedding", show_default=True)
@click.option("--id-column", default="id", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query instead of TSV.")
@click.option("--quiet", is_flag=True)
def search_qdrant(index_path, queries, url, local_path, edge, collection, api_key, grpc, timeout, vector_name,
                  topk, query_k, score, rerank, candidates, hybrid, rrf_k, column, id_column, as_json, quiet):
    """Search the Qdrant collection exported from INDEX_PATH with the vectors in QUERIES."""
    setup_logging(quiet)
    index = load_index(index_path, quiet)
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
            index, target, name, emb.vectors, topk, query_k=query_k, score=score, rerank=rerank, candidates=candidates,
            hybrid=hybrid, rrf_k=rrf_k, vector_name=vector_name,
        ))
    finally:
        close()
    echo_results(index, emb, D, I, as_json)
