"""Text in: embed texts with a local sentence-transformers model, and read a text column of a Parquet file."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from csr_index.io import Embeddings, read_id_column
from csr_index.st_model import SAE_CLASSES, read_modules

from ._deps import sentence_transformers

__all__ = ["Texts", "load_text_model", "embed_texts", "read_texts", "embed_file"]

log = logging.getLogger(__name__)

BATCHES_PER_CHUNK = 16
"""embed_texts hands ST this many batches at a time (ST sorts each chunk by length) and
advances the progress bar after each chunk."""


def load_text_model(path: str | os.PathLike, device: str | None = "cpu") -> Any:
    """A ``SentenceTransformer`` from a local model directory; nothing is downloaded.

    A SparseEncoder directory whose last module is a SparseAutoEncoder gives the dense model
    made of its other modules: the embedding its SparseAutoEncoder reads (what
    :func:`~.convert.load_sparse_autoencoder` expects as input).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such model directory: {root} (csr-index loads local models only)")
    st = sentence_transformers()
    modules = read_modules(root)
    if modules is None:
        log.warning("%s has no modules.json: sentence-transformers adds mean pooling to the bare transformer", root)
    elif modules and str(modules[-1]["type"]).rsplit(".", 1)[-1] in SAE_CLASSES:
        sparse = st.SparseEncoder(str(root), device=device, local_files_only=True)
        dense = st.SentenceTransformer(modules=list(sparse)[:-1], device=device, prompts=sparse.prompts,
                                       default_prompt_name=sparse.default_prompt_name)
        log.info("loaded the dense part of SparseEncoder %s", root)
        return dense
    model = st.SentenceTransformer(str(root), device=device, local_files_only=True)
    log.info("loaded sentence-transformers model %s", root)
    return model


def embed_texts(
    texts: Sequence[str],
    model: str | os.PathLike | Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
    normalize: bool = False,
    prompt_name: str | None = None,
    device: str | None = "cpu",
) -> np.ndarray:
    """Embed ``texts`` with ``model`` (a loaded SentenceTransformer or a local model directory,
    see :func:`load_text_model`) in batches of ``batch_size``; float32 (n, d).

    ``normalize`` L2-normalises the embeddings (as ST's ``normalize_embeddings``); models that
    end with a Normalize module (e.g. all-MiniLM-L6-v2) already do. ``prompt_name`` picks one of
    the model's prompts (e.g. ``"query"``, as ST's ``encode_query``); by default its default prompt,
    if any. ``progress`` shows a tqdm bar.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; row {bad[0]} is {type(texts[bad[0]]).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(model, (str, os.PathLike)):
        model = load_text_model(model, device=device)
    chunk = batch_size * BATCHES_PER_CHUNK
    parts = []
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            batch = texts[start : start + chunk]
            parts.append(np.asarray(model.encode(
                batch, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
                normalize_embeddings=normalize, prompt_name=prompt_name,
            ), dtype=np.float32))
            bar.update(len(batch))
    if not parts:
        dim = _dimension(model)
        return np.empty((0, dim or 0), dtype=np.float32)
    out = np.concatenate(parts)
    if out.ndim != 2:
        raise ValueError(f"the model returned embeddings of shape {out.shape}, not (n, d)")
    return out


def _dimension(model: Any) -> int | None:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return getter()


@dataclass
class Texts:
    """A text column read from a Parquet file, with integer ids or string keys per row."""

    texts: list[str]
    ids: np.ndarray | None = None
    keys: list[str] | None = None
    table: pa.Table | None = None
    """The other columns (for payloads)."""


def read_texts(path: str | os.PathLike, text_column: str = "text", id_column: str | None = "id") -> Texts:
    """Read the string column ``text_column`` of a Parquet file, and ids as :func:`csr_index.io.read_embeddings`
    does (integer ``id_column`` -> ids, string -> keys; the default ``"id"`` may be absent)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    if p.suffix not in (".parquet", ".pq"):
        raise ValueError(f"texts are read from Parquet files; {p} is {p.suffix or 'not'} one")
    try:
        names = pq.read_schema(p).names
    except pa.ArrowException as exc:
        raise ValueError(f"{p} is not a readable Parquet file: {exc}") from exc
    if text_column not in names:
        raise ValueError(f"{p} has no column {text_column!r}; its columns are {names}")
    if id_column is not None and id_column not in names:
        if id_column != "id":
            raise ValueError(f"{p} has no id column {id_column!r}; its columns are {names}")
        id_column = None
    table = pq.read_table(p)
    col = table.column(text_column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ValueError(f"column {text_column!r} has type {col.type}; expected strings")
    if col.null_count:
        raise ValueError(f"column {text_column!r} has {col.null_count} null rows")
    ids, keys = read_id_column(table.column(id_column), id_column) if id_column is not None else (None, None)
    return Texts(col.to_pylist(), ids=ids, keys=keys, table=table.drop_columns([text_column]))


def embed_file(
    path: str | os.PathLike,
    model: str | os.PathLike | Any,
    *,
    text_column: str = "text",
    id_column: str | None = "id",
    batch_size: int = 64,
    progress: bool = False,
) -> Embeddings:
    """Read a Parquet text column and embed it: the :class:`~csr_index.io.Embeddings` that
    ``read_embeddings`` would give for a vector column (what the CLI's ``--text-column`` uses)."""
    texts = read_texts(path, text_column, id_column)
    log.info("embedding %d texts of %s (column %r)", len(texts.texts), path, text_column)
    vectors = embed_texts(texts.texts, model, batch_size=batch_size, progress=progress)
    return Embeddings(vectors, ids=texts.ids, keys=texts.keys, table=texts.table)
