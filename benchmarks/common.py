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


CACHE = ROOT / "runs" / "bench-cache"


def scifact_index(k: int, nested_k: tuple[int, ...] | None = None, nested_weight: float | None = None, seed: int = 0,
                  cache: Path = CACHE):
    """A CSRIndex with the library defaults (or the given ``nested_k``) trained on the SciFact corpus
    and holding it (originals stored), loaded from ``cache`` when an identical one was built
    before: the file name carries a hash of the full training config, so a changed default
    trains afresh."""
    import hashlib
    import json

    from csr_index import CSRConfig, CSRIndex

    config = CSRConfig(seed=seed, nested_k=nested_k, nested_weight=nested_weight, k=k)
    config.nested_k = config.prefix_budgets()  # the default spelled out: one cache entry per model
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    tag = "_".join(map(str, config.nested_k)) + (f"w{nested_weight:g}" if nested_weight is not None else "")
    path = cache / f"scifact-k{k}-{tag or 'single'}-{digest}.csr"
    if path.exists():
        return CSRIndex.load(path)
    xb = load_scifact()[0]
    index = CSRIndex(xb.shape[1], k=k, store_vectors=True, config=config)
    index.train(xb)
    index.add(xb)
    cache.mkdir(parents=True, exist_ok=True)
    index.save(path)
    return index


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path, dpi: int = 120) -> None:
    """Lay out and write a figure (PNG), creating its directory."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    print(f"plot written to {path}")
