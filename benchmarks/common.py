"""Shared helpers for the benchmark scripts: data paths and loaders (not part of the library)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from csr_index.evaluation import read_qrels
from csr_index.rerank import exact_topn
from csr_index.io import read_embeddings

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


def load_scifact(data: Path = DATA / "scifact"):
    """(doc vectors, doc keys, query vectors, query keys, qrels) of BEIR SciFact."""
    corpus = read_embeddings(data / "corpus.parquet")
    queries = read_embeddings(data / "queries.parquet")
    return corpus.vectors, np.array(corpus.keys, dtype=object), queries.vectors, queries.keys, read_qrels(data / "qrels.tsv")


CACHE = ROOT / "runs" / "bench-cache"
THREADS = 2
"""Threads every benchmark trains with (training is deterministic per seed *and* thread count)."""


def pin_threads(n: int) -> None:
    """Use ``n`` threads in torch, numba, faiss and the BLAS, so runs are comparable and reproducible."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def index_cache_path(tag: str, n: int, d: int, config, cache: Path = CACHE, **index_args) -> Path:
    """Where :func:`cached_index` keeps an index: the name carries a hash of everything that
    changes the result — data tag and size, resolved config, index settings, thread count."""
    import hashlib
    import json

    from csr_index import __version__

    resolved = config.resolve(d, index_args.get("h"), index_args.get("k"))
    settings = {k: v for k, v in index_args.items() if k not in ("h", "k")}
    key = json.dumps({"data": tag, "n": n, "config": resolved.to_dict(), "index": settings,
                      "threads": THREADS, "version": __version__}, sort_keys=True)
    return cache / f"{tag}-k{resolved.k}-h{resolved.h}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.csr"


def cached_index(tag: str, xb: np.ndarray, config, cache: Path = CACHE, keys=None, **index_args):
    """A CSRIndex trained on ``xb`` with ``config`` (on THREADS threads) and holding ``xb``. The
    trained adapter is cached in ``cache`` (see :func:`index_cache_path`); the index around it is
    rebuilt on every call (encoding is seconds), so stored codes always follow the current index
    defaults (value dtype, originals, ...)."""
    from csr_index import CSREncoder, CSRIndex

    resolved = config.resolve(xb.shape[1], index_args.get("h"), index_args.get("k"))
    settings = {k: v for k, v in index_args.items() if k not in ("h", "k")}
    path = index_cache_path(tag, len(xb), xb.shape[1], config, cache, **index_args)
    if path.exists():
        index = CSRIndex.from_encoder(CSREncoder.load(path), **settings)
    else:
        pin_threads(THREADS)
        index = CSRIndex(xb.shape[1], config=resolved, **settings)
        index.train(xb)
        cache.mkdir(parents=True, exist_ok=True)
        index.encoder.save(path)
    pin_threads(THREADS)
    index.add(xb, keys=keys)
    index.compact()
    return index


def scifact_index(k: int, nested_k: tuple[int, ...] | None = None, nested_weight: float | None = None, seed: int = 0,
                  cache: Path = CACHE, long: bool = False):
    """A CSRIndex with the library defaults (or the given ``nested_k``; the long schedule,
    ``CSRConfig.long()``, with ``long``) trained on the SciFact corpus and holding it (originals
    stored); cached (see :func:`cached_index`)."""
    from csr_index import CSRConfig

    config = (CSRConfig.long if long else CSRConfig)(seed=seed, nested_k=nested_k, nested_weight=nested_weight, k=k)
    config.nested_k = config.prefix_budgets()  # the default spelled out: one cache entry per model
    return cached_index("scifact", load_scifact()[0], config, cache)


def synthetic_mixes(xb: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """``m`` SYNTHETIC unit vectors, each the re-normalised convex mix ``w * a + (1 - w) * b`` of two
    random rows of ``xb`` with w ~ U(0.5, 0.9) (numpy seed ``seed``): the README's 1M set is the
    100k real pypi vectors plus 900,000 of these."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(xb), m), rng.integers(0, len(xb), m)
    w = rng.uniform(0.5, 0.9, (m, 1)).astype(np.float32)
    out = np.empty((m, xb.shape[1]), dtype=np.float32)
    for s in range(0, m, 100_000):  # in blocks: the (m, d) temporaries of one expression would double memory
        e = min(m, s + 100_000)
        out[s:e] = w[s:e] * xb[a[s:e]] + (1 - w[s:e]) * xb[b[s:e]]
        out[s:e] /= np.linalg.norm(out[s:e], axis=1, keepdims=True)
    return out


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


def exact_ids(xb: np.ndarray, xq: np.ndarray, topk: int, cache: Path | None = None) -> np.ndarray:
    """Ids (nq, topk) of the exact inner-product top-``topk`` of each query: the library's bounded-
    memory flat scan (:func:`csr_index.rerank.exact_topn`), cached as .npy at ``cache`` when given."""
    if cache is not None and cache.exists():
        return np.load(cache)
    ids = exact_topn(xq, xb, topk)[1]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, ids)
    return ids
