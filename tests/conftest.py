"""Shared fixtures: small synthetic embeddings and cheaply trained indexes.

The machine running the suite may be busy, so everything is tiny (d=32, a few
hundred vectors, a few dozen training steps) and each trained adapter is built
once per session and handed out as a deep copy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from csr_index import CSRConfig, CSRIndex

# One intra-op thread: on a small, shared CPU, torch's thread pool makes tiny
# training runs ~30x slower, not faster.
torch.set_num_threads(1)

D = 32
K = 8
H = 128
N_CORPUS = 600
N_QUERIES = 24


def make_embeddings(n: int, d: int = D, seed: int = 0, clusters: int = 12, norm_spread: bool = False) -> np.ndarray:
    """Clustered float32 vectors (like real embeddings: a few topics plus noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))
    if norm_spread:  # give raw inner product something to see
        x *= rng.uniform(0.5, 2.0, size=(n, 1))
    return x.astype(np.float32)


def small_config(**overrides) -> CSRConfig:
    base = dict(steps=30, batch_size=128, warmup_steps=5, seed=0, device="cpu")
    base.update(overrides)
    return CSRConfig(**base)


@pytest.fixture(scope="session")
def corpus() -> np.ndarray:
    x = make_embeddings(N_CORPUS, seed=0, norm_spread=True)
    x.flags.writeable = False  # tests must not modify shared data
    return x


@pytest.fixture(scope="session")
def queries() -> np.ndarray:
    x = make_embeddings(N_QUERIES, seed=1, norm_spread=True)
    x.flags.writeable = False
    return x


@pytest.fixture(scope="session")
def make_index(corpus):
    """Factory: a trained, empty CSRIndex (a fresh deep copy each call).

    ``make_index(metric="ip", store_vectors=True, values_dtype="float16", k=8, h=128, vectors_dtype="float16")``
    (one trained adapter serves every ``vectors_dtype``; None: the library default, int8)
    """
    cache: dict[tuple, CSRIndex] = {}

    def make(
        metric: str = "cosine",
        store_vectors: bool = False,
        values_dtype: str = "float32",
        k: int = K,
        h: int = H,
        vectors_dtype: str | None = None,
    ) -> CSRIndex:
        key = (metric, store_vectors, values_dtype, k, h)
        if key not in cache:
            index = CSRIndex(
                D, k=k, h=h, metric=metric, store_vectors=store_vectors, values_dtype=values_dtype,
                config=small_config(),
            )
            index.train(corpus)
            cache[key] = index
        index = copy.deepcopy(cache[key])
        if vectors_dtype is not None and vectors_dtype != str(index.vectors_dtype):
            index = CSRIndex.from_encoder(index.encoder, store_vectors=store_vectors, values_dtype=values_dtype,
                                          vectors_dtype=vectors_dtype)
        return index

    return make


@pytest.fixture(scope="session")
def filled_index_factory(make_index, corpus):
    """Factory: a trained index holding the whole corpus (ids 0..n-1), deep-copied per call."""
    cache: dict[tuple, CSRIndex] = {}

    def make(**kwargs) -> CSRIndex:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            index = make_index(**kwargs)
            index.add(corpus)
            cache[key] = index
        return copy.deepcopy(cache[key])

    return make


@pytest.fixture
def index(make_index) -> CSRIndex:
    """A trained, empty cosine index."""
    return make_index()


@pytest.fixture
def filled_index(filled_index_factory) -> CSRIndex:
    """A trained cosine index holding the corpus."""
    return filled_index_factory()


@pytest.fixture(scope="session")
def embeddings():
    """Factory for synthetic vectors: ``embeddings(n, d=32, seed=0, norm_spread=False)``."""
    return make_embeddings


@pytest.fixture(scope="session")
def tiny_config():
    """Factory for a fast CPU training config: ``tiny_config(steps=30, ...)``."""
    return small_config
