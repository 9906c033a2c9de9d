"""Adaptive k: fewer latents per stored doc (k_doc) and per query from one trained adapter,
and nested (Matryoshka) training that makes code prefixes useful."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import D, H, K
from csr_index import CSRIndex
from csr_index.train import train_adapter


def test_k_doc_stores_the_k_doc_code_of_each_vector(make_index, corpus):
    index = make_index()
    index.k_doc = 4
    index.add(corpus)
    stored = index.codes()
    expected = index.encode(corpus, k=4)
    assert stored.indices.shape == (len(corpus), 4)
    np.testing.assert_array_equal(stored.indices, expected.indices)
    np.testing.assert_allclose(stored.values, expected.values, rtol=1e-6)
    assert index.stats()["code_bytes_per_vector"] == 4 * (stored.indices.itemsize + stored.values.itemsize)


def test_k_doc_index_searches_with_any_query_budget(make_index, corpus, queries):
    index = make_index(store_vectors=True)
    index.k_doc = 2
    index.add(corpus)
    stored = index.codes()
    for kq in (1, 2, K):
        query = index.encode(queries, kq)
        for score in ("code", "asymmetric"):
            D, I = index.search(queries, 5, query_k=kq, score=score, rerank=0)
            assert (I[:, 0] >= 0).mean() > 0.5, "most queries find something"
            assert all((np.diff(row[np.isfinite(row)]) <= 1e-6).all() for row in D), "scores descending"
            for qi, row in enumerate(I):  # the default engine only reaches docs sharing a query latent
                q_lat = set(query.indices[qi][query.values[qi] > 0].tolist()) if score == "code" else None
                for doc in row[row >= 0]:
                    d_lat = set(stored.indices[doc][stored.values[doc] > 0].tolist())
                    assert q_lat is None or q_lat & d_lat
    with pytest.raises(ValueError, match=f"query_k=9 exceeds the maximum of {K}"):
        index.search(queries, 5, query_k=K + 1)


def test_k_doc_survives_save_and_load(make_index, corpus, queries, tmp_path):
    index = make_index()
    index.k_doc = 3
    index.add(corpus)
    index.save(tmp_path / "ix")
    loaded = CSRIndex.load(tmp_path / "ix")
    assert (loaded.k, loaded.k_doc) == (K, 3)
    for score in ("code", "asymmetric"):
        a = index.search(queries, 5, score=score)
        b = loaded.search(queries, 5, score=score)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5)


def test_k_doc_bad_values(make_index, corpus):
    with pytest.raises(ValueError, match="k_doc=9 exceeds the maximum of 8"):
        CSRIndex(D, k=8, h=H, k_doc=9)
    with pytest.raises(ValueError, match="k_doc must be positive"):
        CSRIndex(D, k=8, h=H, k_doc=0)
    index = make_index()
    index.add(corpus[:20])
    with pytest.raises(ValueError, match="only change while the index is empty"):
        index.k_doc = 2
    assert index.ntotal == 20 and index.k_doc == K  # nothing lost
    index.reset()
    index.k_doc = 2
    assert index.k_doc == 2


def test_nested_training_makes_short_prefixes_reconstruct_better(corpus, tiny_config):
    """A Matryoshka prefix loss on budget 2 lowers the error of 2-latent codes
    compared to the single-k objective, same data, seed and steps."""
    x = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)

    def prefix_fvu(nested: tuple[int, ...]) -> float:
        adapter = train_adapter(x, D, H, tiny_config(steps=60, k=K, nested_k=nested)).adapter
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            values, indices = adapter.encode(xt, 2)
            err = ((adapter.decode(values, indices) - xt) ** 2).sum()
            return float(err / ((xt - xt.mean(0)) ** 2).sum())

    single, nested = prefix_fvu(()), prefix_fvu((2, 4))
    assert nested < single, (nested, single)


def test_nested_weight_scales_the_prefix_terms(corpus, tiny_config):
    """Weight 0 trains exactly the single-k model; a positive weight trains another one."""
    x = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)

    def weights(**overrides) -> np.ndarray:
        return train_adapter(x, D, H, tiny_config(steps=10, k=K, **overrides)).adapter.W.detach().numpy()

    single = weights(nested_k=())
    np.testing.assert_array_equal(weights(nested_k=(2, 4), nested_weight=0.0), single)
    assert not np.allclose(weights(nested_k=(2, 4), nested_weight=1.0), single)


def test_nested_weight_must_be_non_negative():
    from csr_index import CSRConfig

    with pytest.raises(ValueError, match="nested_weight must be >= 0"):
        CSRConfig(nested_k=(4,), nested_weight=-1.0)


@pytest.mark.parametrize(
    "k, nested_k, expected",
    [(32, None, (8, 16)), (64, None, (16, 32)), (16, None, (8,)), (8, None, ()), (1, None, ()), (32, (), ()),
     (8, (2, 4), (2, 4)), (32, (16, 4, 40, 16), (4, 16))],
)
def test_prefix_budgets(k, nested_k, expected):
    from csr_index import CSRConfig

    assert CSRConfig(k=k, nested_k=nested_k).prefix_budgets() == expected
