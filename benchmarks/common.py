"""Shared helpers for the benchmark scripts: data paths and loaders (not part of the library)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from csr_index.evaluation import read_qrels
from csr_index.io import read_embeddings

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


def load_scifact(data: Path = DATA / "scifact"):
    """(doc vectors, doc keys, query vectors, query keys, qrels) of BEIR SciFact."""
    corpus = read_embeddings(data / "corpus.parquet")
    queries = read_embeddings(data / "queries.parquet")
    return corpus.vectors, np.array(corpus.keys, dtype=object), queries.vectors, queries.keys, read_qrels(data / "qrels.tsv")
