"""Helpers shared by the ``csr-index`` commands: logging, loading, reading vectors, printing results."""

from __future__ import annotations

import json
import logging
import sys

import click
import numpy as np

from csr_index import CSRIndex
from csr_index.errors import IndexFormatError
from csr_index.io import Embeddings, read_embeddings

__all__ = ["setup_logging", "load_index", "read_vectors", "query_keys", "result_labels", "echo_results", "parse_int_list"]


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    # one line per HTTP request (qdrant-client) is noise next to a progress bar
    logging.getLogger("httpx").setLevel(logging.WARNING)


def load_index(path: str, quiet: bool, if_empty: str | None = None) -> CSRIndex:
    """The index at ``path``; with ``if_empty`` (what to do instead), one without documents
    (e.g. an adapter saved alone) is an error that says so."""
    try:
        index = CSRIndex.load(path, progress=not quiet)
    except IndexFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    if if_empty is not None and index.ntotal == 0:
        raise click.ClickException(f"{path} holds no documents (an adapter saved alone?): {if_empty}")
    return index


def read_vectors(path: str, column: str, id_column: str | None) -> Embeddings:
    try:
        return read_embeddings(path, column=column, id_column=id_column)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


def query_keys(emb: Embeddings) -> list[str]:
    """How each query is named in the output: its key, its id, or its row number."""
    if emb.keys is not None:
        return emb.keys
    if emb.ids is not None:
        return [str(i) for i in emb.ids]
    return [str(i) for i in range(len(emb.vectors))]


def result_labels(index: CSRIndex, ids: np.ndarray) -> np.ndarray:
    """Each result's key when the index has one, else its id as text; None for -1."""
    keys = index.keys_of(ids)
    has_key = keys != None  # noqa: E711  (element-wise on an object array)
    return np.where(has_key, keys, np.where(ids >= 0, ids.astype(str), None))


def echo_results(index: CSRIndex, emb: Embeddings, D: np.ndarray, I: np.ndarray, as_json: bool) -> None:
    """Print results as TSV (query, rank, id, score) or one JSON object per query."""
    for qkey, drow, lrow in zip(query_keys(emb), D, result_labels(index, I)):
        hits = [(str(lab), float(s)) for lab, s in zip(lrow, drow) if lab is not None]
        if as_json:
            click.echo(json.dumps({"query": qkey, "results": [{"id": i, "score": s} for i, s in hits]}))
        else:
            for rank, (lab, s) in enumerate(hits, 1):
                click.echo(f"{qkey}\t{rank}\t{lab}\t{s:.6f}")


def parse_int_list(value: str | None, name: str) -> tuple[int, ...] | None:
    """'4,8,16' -> (4, 8, 16); 'none' or '' -> (); None (option not given) stays None;
    anything else is a usage error."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return ()
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{name} must be comma-separated integers, got {value!r}") from None
