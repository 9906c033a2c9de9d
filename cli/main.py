"""``csr-index`` commands: build, search, eval, info. Thin: parse, call the library, print."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from csr_index import CSRConfig, CSRIndex
from csr_index.build import build_from_file
from csr_index.clusters import CLUSTER_ROWS
from csr_index.warmup import warm_up
from csr_index.cli.common import (
    echo_results,
    load_index,
    parse_int_list,
    query_keys,
    read_vectors,
    result_labels,
    setup_logging,
)
from csr_index.cli.text import read_inputs, text_options
from csr_index.evaluation import evaluate_run, read_qrels
from csr_index.io import EmbeddingFile
from csr_index.rerank import exact_topn
from csr_index.manifest import check_writable

SCORE_CHOICE = click.Choice(["asymmetric", "code", "exact"])
NO_DOCUMENTS = "nothing to search; build one with documents, or search its Qdrant collection with search-qdrant"


@click.group()
@click.version_option(package_name="csr-index")
def main() -> None:
    """Learned sparse codes (CSR) for dense-embedding search."""


@main.command()
@click.argument("embeddings", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(),
              help="Index directory (default: EMBEDDINGS with .csr suffix); an index already there is replaced.")
@click.option("--k", "k", default=32, show_default=True, help="Active latents per code.")
@click.option("--h", "h", type=int, default=None, help="Code width (default 4 * d).")
@click.option("--k-doc", "k_doc", type=int, default=None, help="Active latents per stored code (default: --k).")
@click.option("--nested-k", default=None, callback=lambda ctx, param, value: parse_int_list(value, "--nested-k"),
              help="Prefix budgets trained besides k, e.g. '8,16' (default: k/4,k/2 of >= 8 latents; 'none': k only).")
@click.option("--column", default="embedding", show_default=True, help="Parquet column with the vectors.")
@click.option("--id-column", default="id", show_default=True, help="Parquet column with ids (int) or keys (str).")
@click.option("--metric", type=click.Choice(["cosine", "ip"]), default="cosine", show_default=True)
@click.option("--store-vectors/--no-store-vectors", default=True, show_default=True,
              help="Keep the originals for exact re-ranking.")
@click.option("--values-dtype", type=click.Choice(["float32", "float16"]), default="float16", show_default=True)
@click.option("--vectors-dtype", type=click.Choice(["float16", "int8"]), default="int8", show_default=True,
              help="How the originals are kept: float16, or int8 with a float32 scale per vector (half the bytes).")
@click.option("--cluster-rows", type=click.IntRange(min=0), default=CLUSTER_ROWS, show_default=True,
              help="Order the rows of an index of 262,144+ rows by cluster, about this many rows each, "
                   "so a search reads only each query's nearest clusters (0: off).")
@click.option("--schedule", type=click.Choice(["fast", "long"]), default="fast", show_default=True,
              help="Training schedule: the fast default (a data-driven start, 800 steps), or CSRConfig.long() "
                   "(random start, 2,000-5,000 steps of 1,024; minutes to hours on a CPU).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: the schedule's).")
@click.option("--max-train", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="Train on a random sample of at most this many rows (0: all).")
@click.option("--batch-rows", type=click.IntRange(min=1), default=65_536, show_default=True,
              help="Rows read and encoded at a time.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="Training device (default: cuda if available).")
@click.option("--quiet", is_flag=True, help="No progress bars or log lines.")
@text_options
def build(embeddings, output, k, h, k_doc, nested_k, column, id_column, metric, store_vectors, values_dtype,
          vectors_dtype, cluster_rows, schedule, steps, max_train, batch_rows, seed, device, quiet, text_column,
          text_model, embed_batch_size):
    """Train the adapter on EMBEDDINGS (.parquet or .npy), encode and save an index.

    The file is read in batches: training uses a random sample of at most --max-train rows,
    then every row is encoded and added one batch at a time, so memory holds the index, the
    sample and one batch, never the whole file. With --text-column and --model, the Parquet
    file's text is embedded first (all of it, in memory)."""
    setup_logging(quiet)
    out = Path(output) if output else Path(embeddings).with_suffix(".csr")
    try:  # a save that would fail is reported now, not after training and encoding
        check_writable(out)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    text = text_column is not None or text_model is not None
    source = read_inputs(embeddings, column, id_column, text_column, text_model, embed_batch_size, quiet) if text else None
    try:
        source = EmbeddingFile(embeddings, column, id_column) if source is None else source
        settings = dict(seed=seed, device=device, nested_k=nested_k, max_train=max_train if max_train > 0 else None,
                        **({} if steps is None else {"steps": steps}))
        config = CSRConfig.long(**settings) if schedule == "long" else CSRConfig(**settings)
        index = CSRIndex(source.dim, k=k, h=h, k_doc=k_doc, metric=metric, store_vectors=store_vectors,
                         values_dtype=values_dtype, vectors_dtype=vectors_dtype, config=config, progress=not quiet,
                         cluster_rows=cluster_rows or None)
        seconds = build_from_file(index, source, batch_rows=batch_rows, progress=not quiet)
        start = time.perf_counter()
        index.save(out, overwrite=True)  # a build replaces the index already at --output (check_writable vetted it)
        seconds["save"] = time.perf_counter() - start
        seconds["compile search kernels"] = warm_up()
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:  # RuntimeError: e.g. torch's device errors
        raise click.ClickException(str(exc)) from exc
    phases = ", ".join(f"{name} {s:.1f}s" for name, s in seconds.items())
    click.echo(f"built {index!r} ({phases}; training fvu {index.train_stats['fvu']:.3f}) -> {out}")


@main.command()
@click.argument("index_path", type=click.Path(exists=True))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--topk", default=10, show_default=True, help="Results per query.")
@click.option("--query-k", "query_k", type=int, default=None, help="Latents of each query's code (default: the index's k).")
@click.option("--score", type=SCORE_CHOICE, default="asymmetric", show_default=True)
@click.option("--rerank", type=int, default=None,
              help="Re-rank this many candidates exactly (default: max(100, 10 * topk) with stored originals, 3x that under --score code; 0: off).")
@click.option("--column", default="embedding", show_default=True)
@click.option("--id-column", default="id", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query instead of TSV.")
@click.option("--quiet", is_flag=True)
@text_options
def search(index_path, queries, topk, query_k, score, rerank, column, id_column, as_json, quiet, text_column, text_model,
           embed_batch_size):
    """Search INDEX_PATH with the vectors in QUERIES (or its --text-column embedded with --model);
    prints query, rank, id, score."""
    setup_logging(quiet)
    index = load_index(index_path, quiet, if_empty=NO_DOCUMENTS)
    emb = read_inputs(queries, column, id_column, text_column, text_model, embed_batch_size, quiet)
    try:
        D, I = index.search(emb.vectors, topk, query_k=query_k, score=score, rerank=rerank)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    echo_results(index, emb, D, I, as_json)


@main.command(name="eval")
@click.argument("index_path", type=click.Path(exists=True))
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--qrels", required=True, type=click.Path(exists=True, dir_okay=False),
              help="BEIR qrels TSV or TREC qrels.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Dense corpus for the exact baseline (default: the index's stored vectors).")
@click.option("--query-k", "query_k", type=int, default=None, help="Latents of each query's code.")
@click.option("--column", default="embedding", show_default=True)
@click.option("--id-column", default="id", show_default=True)
@click.option("--quiet", is_flag=True)
@text_options
def evaluate(index_path, queries, qrels, corpus, query_k, column, id_column, quiet, text_column, text_model,
             embed_batch_size):
    """NDCG@10 and Recall@100 of each scoring mode, beside exact dense search.

    With --text-column and --model the queries' text is embedded (--corpus stays vectors)."""
    setup_logging(quiet)
    index = load_index(index_path, quiet, if_empty=NO_DOCUMENTS)
    emb = read_inputs(queries, column, id_column, text_column, text_model, embed_batch_size, quiet)
    try:
        labels = read_qrels(qrels)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    qkeys = query_keys(emb)
    depth = 100
    rows = []

    def record(name, D, I):
        metrics = evaluate_run(labels, qkeys, D, result_labels(index, I))
        rows.append((name, metrics))

    try:
        dense = _dense_baseline(index, emb.vectors, corpus, column, id_column, depth)
        if dense is not None:
            record("dense (exact)", *dense)
        for score in ("code", "asymmetric"):
            record(f"csr {score}", *index.search(emb.vectors, depth, query_k=query_k, score=score, rerank=0))
        if index.store_vectors:
            record("csr asymmetric + rerank 100", *index.search(emb.vectors, depth, query_k=query_k, rerank=depth))
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    names = list(rows[0][1])
    click.echo(f"{'method':32s}" + "".join(f"{n:>12s}" for n in names))
    base = rows[0][1][names[0]] if dense is not None else None
    for name, metrics in rows:
        ratio = f"  ({metrics[names[0]] / base:.1%} of dense)" if base else ""
        click.echo(f"{name:32s}" + "".join(f"{metrics[n]:12.4f}" for n in names) + ratio)


def _dense_baseline(index, xq, corpus, column, id_column, depth):
    """Exact dense top-``depth``: from the corpus file, else from the stored originals."""
    if corpus is not None:
        emb = read_vectors(corpus, column, id_column)
        xb, ids = emb.vectors, emb.ids
        if ids is None:
            ids = np.arange(len(xb), dtype=np.int64) if emb.keys is None else None
        if ids is None:
            # string keys: map them onto the index's ids through its stored keys
            key_to_id = {key: i for i, key in zip(index.ids, index.keys_of(index.ids)) if key is not None}
            ids = np.array([key_to_id.get(k_, -1) for k_ in emb.keys], dtype=np.int64)
    elif index.store_vectors:
        xb, ids = None, index.ids
    else:
        return None
    if xb is None:
        return index.search(xq, depth, score="exact")
    q, xb = np.asarray(xq, dtype=np.float32), np.asarray(xb, dtype=np.float32)
    if index.metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    D, rows = exact_topn(q, xb, depth)
    return D, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


@main.command()
@click.argument("index_path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True)
def info(index_path, as_json):
    """Config, counts, bytes per vector and latent usage of an index."""
    index = load_index(index_path, quiet=True)
    summary = index.stats()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key:24s} {value}")


from csr_index.cli.qdrant import export_qdrant, search_qdrant  # noqa: E402  (registers on the group)

main.add_command(export_qdrant)
main.add_command(search_qdrant)

if __name__ == "__main__":
    main()
