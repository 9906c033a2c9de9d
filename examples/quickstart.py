"""Quickstart: build a CSR index over real SciFact vectors, search it, save and reload it.

    .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from csr_index import CSRIndex
from csr_index.io import read_embeddings

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = read_embeddings(DATA / "corpus.parquet")  # 5,183 x 384 all-MiniLM-L6-v2 vectors
    queries = read_embeddings(DATA / "queries.parquet")

    index = CSRIndex(d=corpus.vectors.shape[1])  # k = 32 latents, h = 4 * d, originals kept for re-ranking
    index.train(corpus.vectors)  # a few minutes on 2 CPU cores
    index.add(corpus.vectors, keys=corpus.keys)
    print(index)

    D, I = index.search(queries.vectors[:3], topk=5)  # sparse asymmetric shortlist + exact re-rank
    for q, (scores, ids) in enumerate(zip(D, I)):
        print(f"query {queries.keys[q]}:", list(zip(index.keys_of(ids), np.round(scores, 3))))

    D, I = index.search(queries.vectors[:3], topk=5, score="code", query_k=16, rerank=0)  # 16 latents per query
    print("code scoring, query_k=16:", index.keys_of(I[0]))

    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "scifact.csr")
        again = CSRIndex.load(Path(tmp) / "scifact.csr")  # memory-mapped codes
        assert (again.search(queries.vectors[:3], topk=5)[1] == index.search(queries.vectors[:3], topk=5)[1]).all()
        print("reloaded:", again, again.stats()["memory_bytes_per_vector"], "bytes per vector in memory")


if __name__ == "__main__":
    main()
