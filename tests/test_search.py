"""Search results against a brute-force numpy reference written from the documented formulas.

References score every (query, stored row) pair in float64 and mark the pairs
that cannot be results with -inf; results are compared tie-tolerantly: the
returned scores must equal the reference's best scores, and each returned id
must have the score it is reported with.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import csr_index.engines.reference

# ------------------------------------------------------------------ references


def prepared(index, x) -> np.ndarray:
    """What the index does to incoming vectors: float, L2-normalised under cosine."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True) if index.metric == "cosine" else x


def unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


def reference_code_scores(index, xq, k=None) -> np.ndarray:
    """score='code': query code . doc code, each latent weighted by the adapter's latent
    weight (cosine of the weighted codes under metric='cosine'); only docs sharing at
    least one active latent with the query are results."""
    w = index.adapter.latent_weight.numpy().astype(np.float64)
    q = index.encode(xq, k).to_dense().astype(np.float64) * w
    docs = index.codes().to_dense().astype(np.float64) * w
    shares = ((q > 0).astype(float) @ (docs > 0).T.astype(float)) > 0
    if index.metric == "cosine":
        q, docs = unit_rows(q), unit_rows(docs)
    scores = q @ docs.T
    scores[~shares] = -np.inf
    return scores


def reference_asymmetric_scores(index, xq, support_k=None) -> np.ndarray:
    """score='asymmetric': ``x_q . decode(z_d)`` for every doc, divided by ``||decode(z_d)||``
    under cosine. ``support_k``: what the pruned engine can find without a candidate cap —
    only docs sharing a latent with the query's ``support_k``-code are results."""
    x = prepared(index, xq)
    codes = index.codes()
    recon = index.decode(codes).astype(np.float64)
    scores = x @ recon.T
    if index.metric == "cosine":
        scores = scores / np.linalg.norm(recon, axis=1)[None, :]
    if support_k is not None:
        support = index.encoder.encode_prepared(index.prepare(xq), support_k, refit=False)[0]  # raw top-k latents
        mask = (support.to_dense() > 0).astype(np.float64)
        scores[(mask @ (codes.to_dense() > 0).T) == 0] = -np.inf
    return scores


def reference_rerank_scores(index, xq, candidate_ids) -> np.ndarray:
    """Exact ``x_q . x_d`` over the stored float16 originals, for the candidates only."""
    x = prepared(index, xq)
    vecs = index.vectors().astype(np.float64)
    exact = x @ vecs.T
    row_of = {int(i): r for r, i in enumerate(index.ids)}
    scores = np.full_like(exact, -np.inf)
    for qi, cands in enumerate(candidate_ids):
        rows = [row_of[int(i)] for i in cands if i >= 0]
        scores[qi, rows] = exact[qi, rows]
    return scores


def assert_matches_reference(index, D, I, ref, rtol=1e-4, atol=1e-4):
    """Tie-tolerant comparison of (D, I) with reference scores ``ref`` (nq, ntotal) by storage row."""
    nq, topk = D.shape
    assert D.dtype == np.float32 and I.dtype == np.int64 and I.shape == (nq, topk)
    row_of = {int(i): r for r, i in enumerate(index.ids)}
    for q in range(nq):
        finite = np.isfinite(ref[q])
        n_valid = min(topk, int(finite.sum()))
        # padding
        assert (I[q, n_valid:] == -1).all(), f"query {q}: expected {n_valid} results, got {I[q]}"
        assert np.isneginf(D[q, n_valid:]).all()
        got_ids = I[q, :n_valid]
        assert (got_ids >= 0).all(), f"query {q}: expected {n_valid} results, got {I[q]}"
        assert len(set(got_ids.tolist())) == n_valid, "no id twice"
        # the best scores, in descending order
        assert (np.diff(D[q, :n_valid]) <= 0).all(), "scores descending"
        best = np.sort(ref[q][finite])[::-1][:n_valid]
        np.testing.assert_allclose(D[q, :n_valid], best, rtol=rtol, atol=atol, err_msg=f"query {q}: scores")
        # ... each belonging to the id it is reported with (equal-score swaps allowed)
        own = ref[q, [row_of[int(i)] for i in got_ids]]
        np.testing.assert_allclose(D[q, :n_valid], own, rtol=rtol, atol=atol, err_msg=f"query {q}: ids")


def tolerance(values_dtype: str) -> dict:
    # float16 stored values: the index keeps the float32 reconstruction norm
    return dict(rtol=3e-3, atol=3e-3) if values_dtype == "float16" else dict(rtol=1e-4, atol=1e-4)


METRICS = ["cosine", "ip"]
DTYPES = ["float32", "float16"]

# ---------------------------------------------------------------- code scoring


@pytest.mark.parametrize("values_dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [None, 3])
def test_code_search_matches_brute_force(filled_index_factory, queries, metric, values_dtype, k):
    index = filled_index_factory(metric=metric, values_dtype=values_dtype).set_engine("inverted")
    D, I = index.search(queries, topk=10, query_k=k, score="code")
    assert_matches_reference(index, D, I, reference_code_scores(index, queries, k), **tolerance(values_dtype))


def test_code_search_pads_when_few_docs_share_a_latent(index, corpus, queries):
    index.add(corpus[:1])  # a single stored doc
    D, I = index.search(queries, topk=3, score="code")
    doc_latents = set(index.codes().indices[0][index.codes().values[0] > 0].tolist())
    q_codes = index.encode(queries)
    for qi in range(len(queries)):
        q_latents = set(q_codes.indices[qi][q_codes.values[qi] > 0].tolist())
        expected = [0] if q_latents & doc_latents else []
        assert I[qi].tolist() == expected + [-1] * (3 - len(expected))
        assert np.isneginf(D[qi, len(expected):]).all()
    assert (I == -1).any(), "the data should include a query sharing no latent with the doc"


# ---------------------------------------------------------- asymmetric scoring


@pytest.mark.parametrize("values_dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 4, 8])
def test_pruned_asymmetric_search_finds_docs_sharing_the_query_latents(filled_index_factory, queries, metric,
                                                                       values_dtype, k):
    """The default engine reads the posting lists of the query's query_k latents and scores what it finds
    exactly; without a candidate cap that is every doc sharing one of those latents."""
    index = filled_index_factory(metric=metric, values_dtype=values_dtype).set_engine("pruned", candidates=None, list_cut=None,
                                                                                     full_scan_below=0)
    D, I = index.search(queries, topk=10, query_k=k, score="asymmetric")
    assert_matches_reference(index, D, I, reference_asymmetric_scores(index, queries, k), **tolerance(values_dtype))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("query_k", [None, 2])
def test_exact_asymmetric_search_scores_every_reconstruction(filled_index_factory, queries, metric, query_k):
    """The exact engine scans every code: query_k only steers shortlists, it never changes the score."""
    index = filled_index_factory(metric=metric).set_engine("inverted")
    D, I = index.search(queries, topk=10, score="asymmetric", query_k=query_k)
    assert_matches_reference(index, D, I, reference_asymmetric_scores(index, queries))


def test_default_query_k_written_out_is_the_default(filled_index, queries):
    for score in ("code", "asymmetric"):
        D0, I0 = filled_index.search(queries, 10, score=score)
        D1, I1 = filled_index.search(queries, 10, score=score, query_k=filled_index.k)
        np.testing.assert_array_equal(I1, I0)
        np.testing.assert_array_equal(D1, D0)


def test_k_means_the_number_of_results_as_in_faiss(filled_index, queries):
    D, I = filled_index.search(queries, k=5)
    assert D.shape == I.shape == (len(queries), 5)
    np.testing.assert_array_equal(I, filled_index.search(queries, 5)[1])
    assert filled_index.search(queries)[1].shape == (len(queries), 10)
    with pytest.raises(ValueError, match="query_k"):
        filled_index.search(queries, 10, k=5)


def test_asymmetric_is_the_default_score(filled_index, queries):
    D1, I1 = filled_index.search(queries, 10)
    D2, I2 = filled_index.search(queries, 10, score="asymmetric")
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def test_query_scale_matters_only_under_ip(filled_index_factory, queries):
    cos = filled_index_factory(metric="cosine")
    for score in ("code", "asymmetric"):
        np.testing.assert_allclose(cos.search(queries, 10, score=score)[0],
                                   cos.search(2 * queries, 10, score=score)[0], rtol=1e-5)
    ip = filled_index_factory(metric="ip")
    assert not np.allclose(ip.search(queries, 10, score="code")[0], ip.search(2 * queries, 10, score="code")[0])


# -------------------------------------------------------------------- rerank


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("score, k", [("code", None), ("asymmetric", 4)])
def test_rerank_is_exact_over_the_shortlist(filled_index_factory, queries, metric, score, k):
    index = filled_index_factory(metric=metric, store_vectors=True)
    _, shortlist = index.search(queries, topk=30, query_k=k, score=score, rerank=0)
    D, I = index.search(queries, topk=5, query_k=k, score=score, rerank=30)
    ref = reference_rerank_scores(index, queries, shortlist)
    assert_matches_reference(index, D, I, ref, rtol=1e-4, atol=1e-4)


def test_rerank_is_on_by_default_with_stored_vectors(filled_index_factory, queries):
    index = filled_index_factory(store_vectors=True)
    D, I = index.search(queries, 5)
    D100, I100 = index.search(queries, 5, rerank=100)  # default: max(100, 10 * topk)
    np.testing.assert_array_equal(I, I100)
    np.testing.assert_array_equal(D, D100)
    D0, I0 = index.search(queries, 5, rerank=0)
    plain = filled_index_factory()  # same adapter and codes, no originals
    np.testing.assert_array_equal(I0, plain.search(queries, 5)[1])


def test_stored_vectors_find_themselves(filled_index_factory, corpus):
    index = filled_index_factory(store_vectors=True)
    D, I = index.search(corpus[:20], 1, score="code", rerank=50)
    np.testing.assert_array_equal(I[:, 0], np.arange(20))
    np.testing.assert_allclose(D[:, 0], 1.0, atol=2e-3)  # cosine with its float16 copy


# ------------------------------------------------------- result shapes, padding


@pytest.mark.parametrize("score", ["code", "asymmetric"])
def test_topk_larger_than_ntotal_pads_with_minus_one(index, corpus, queries, score):
    index.add(corpus[:5])
    D, I = index.search(queries, topk=12, score=score)
    assert D.shape == I.shape == (len(queries), 12)
    assert (I[:, 5:] == -1).all() and np.isneginf(D[:, 5:]).all()
    valid = I >= 0
    assert np.isfinite(D[valid]).all() and np.isneginf(D[~valid]).all()
    assert set(I[valid].tolist()) <= set(range(5))


@pytest.mark.parametrize("score", ["code", "asymmetric"])
def test_empty_index_returns_only_padding(index, queries, score):
    D, I = index.search(queries, 4, score=score)
    assert (I == -1).all() and np.isneginf(D).all()
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_single_query(filled_index, corpus):
    D, I = filled_index.search(corpus[3:4], 7)
    assert D.shape == I.shape == (1, 7)


# ------------------------------------------------------------ adding and ids


def test_add_with_ids_results_carry_those_ids(make_index, corpus, queries):
    plain = make_index()
    plain.add(corpus)
    custom = make_index()
    ids = 10_000 + 7 * np.arange(len(corpus))[::-1]
    custom.add_with_ids(corpus, ids)
    np.testing.assert_array_equal(custom.ids, ids)
    for score in ("code", "asymmetric"):
        D0, I0 = plain.search(queries, 10, score=score)
        D1, I1 = custom.search(queries, 10, score=score)
        np.testing.assert_array_equal(D1, D0)
        np.testing.assert_array_equal(I1, np.where(I0 >= 0, ids[np.maximum(I0, 0)], -1))


def test_several_add_batches_equal_one_batch(make_index, corpus, queries):
    one = make_index(store_vectors=True)
    one.add(corpus)
    many = make_index(store_vectors=True)
    for chunk in np.array_split(corpus, [1, 100, 101, 350]):
        many.add(chunk)
    many.search(queries[:1], 1)  # a search between adds must not break anything
    np.testing.assert_array_equal(many.ids, np.arange(len(corpus)))
    assert many.ntotal == one.ntotal == len(corpus)
    for kwargs in (dict(score="code"), dict(score="asymmetric", query_k=4), dict(rerank=40), dict(score="exact")):
        D0, I0 = one.search(queries, 10, **kwargs)
        D1, I1 = many.search(queries, 10, **kwargs)
        np.testing.assert_array_equal(I1, I0)
        np.testing.assert_allclose(D1, D0, rtol=1e-5, atol=1e-6)


def test_code_vectors_inner_product_is_the_code_score(filled_index, queries):
    D, I = filled_index.search(queries, 10, score="code")
    docs = filled_index.code_vectors().to_scipy()
    q = filled_index.query_code_vectors(queries).to_scipy()
    rows = {int(i): r for r, i in enumerate(filled_index.ids)}
    dense = (q @ docs.T).toarray()
    for qi in range(len(queries)):
        got = [dense[qi, rows[int(i)]] for i in I[qi] if i >= 0]
        np.testing.assert_allclose(got, D[qi][: len(got)], rtol=1e-5, atol=1e-6)


def test_idf_weights_lower_the_busiest_latents(filled_index):
    w = filled_index.adapter.latent_weight.numpy()
    codes = filled_index.codes()
    df = np.bincount(codes.indices[codes.values > 0].astype(np.int64), minlength=filled_index.h)
    used = df > 0
    assert w[used].min() < w[used].max()
    assert w[np.argmax(df)] == w[used].min()


def test_add_between_searches_is_seen(index, corpus, queries):
    index.set_engine("inverted")
    index.add(corpus[:300])
    _, I_half = index.search(queries, 10)
    index.add(corpus[300:])
    assert index.ntotal == len(corpus)
    D, I = index.search(queries, 10, score="code")
    assert_matches_reference(index, D, I, reference_code_scores(index, queries))
    assert I_half.max() < 300


def test_reset_empties_but_keeps_the_adapter(filled_index, corpus, queries):
    D0, I0 = filled_index.search(queries, 10)
    filled_index.reset()
    assert filled_index.ntotal == 0 and filled_index.is_trained and len(filled_index.ids) == 0
    D, I = filled_index.search(queries, 10)
    assert (I == -1).all()
    filled_index.add(corpus)
    D1, I1 = filled_index.search(queries, 10)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)


def test_search_results_map_to_keys(index, corpus, queries):
    keys = [f"doc-{i}" for i in range(len(corpus))]
    index.add(corpus, keys=keys)
    _, I = index.search(queries, 5, score="code")
    labels = index.keys_of(I)
    assert labels.shape == I.shape
    for i, label in zip(I.ravel(), labels.ravel()):
        assert label == (None if i < 0 else f"doc-{i}")


def test_float16_values_give_nearly_the_same_results(filled_index_factory, queries):
    f32 = filled_index_factory()
    f16 = filled_index_factory(values_dtype="float16")
    assert f16.codes().values.dtype == np.float16
    for score in ("code", "asymmetric"):
        D32, I32 = f32.search(queries, 10, score=score)
        D16, I16 = f16.search(queries, 10, score=score)
        np.testing.assert_allclose(D16, D32, rtol=1e-2, atol=1e-2)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I32, I16)])
        assert overlap > 0.9


@pytest.mark.parametrize("score, k", [("code", None), ("asymmetric", 3)])
def test_scoring_in_blocks_gives_the_same_results(filled_index_factory, queries, monkeypatch, score, k):
    index = filled_index_factory().set_engine("scipy")
    D0, I0 = index.search(queries, 10, query_k=k, score=score)
    # force blocks of 5 queries (the per-query offset must follow its query)
    monkeypatch.setattr(csr_index.engines.reference, "BLOCK_BYTES", 8 * index.ntotal * 5)
    D1, I1 = index.search(queries, 10, query_k=k, score=score)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)


# --------------------------------------------------------------- properties


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n_docs=st.integers(1, 80),
    n_queries=st.integers(1, 4),
    topk=st.integers(1, 25),
    metric=st.sampled_from(METRICS),
    mode=st.sampled_from(["code", "asymmetric"]),
    k=st.integers(1, 8),
)
def test_property_engine_equals_brute_force(make_index, seed, n_docs, n_queries, topk, metric, mode, k):
    index = make_index(metric=metric).set_engine("inverted")
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n_docs, index.d)).astype(np.float32)
    xq = rng.standard_normal((n_queries, index.d)).astype(np.float32)
    index.add_with_ids(docs, rng.permutation(10 * n_docs)[:n_docs])
    D, I = index.search(xq, topk, query_k=k, score=mode)
    ref = reference_code_scores(index, xq, k) if mode == "code" else reference_asymmetric_scores(index, xq)
    assert_matches_reference(index, D, I, ref)


def test_default_rerank_depth_depends_on_the_shortlist(filled_index_factory, queries):
    """A code x code shortlist holds fewer true neighbours than an asymmetric one, so by default
    it is re-ranked three times deeper: 300 candidates for topk <= 10, 30 * topk above."""
    from csr_index.scoring import default_rerank

    assert [default_rerank("asymmetric", 5), default_rerank("code", 5), default_rerank("code", 20)] == [100, 300, 600]
    # deeper for a collection beyond 100k docs: x (n / 100k) ** 0.6, x4 at 1M; none below
    assert [default_rerank("asymmetric", 10, 1_000_000), default_rerank("asymmetric", 10, 50_000)] == [398, 100]
    index = filled_index_factory(store_vectors=True)
    for score in ("code", "asymmetric"):
        D, I = index.search(queries, 5, score=score)
        Dr, Ir = index.search(queries, 5, score=score, rerank=default_rerank(score, 5))
        np.testing.assert_array_equal(I, Ir)
        np.testing.assert_array_equal(D, Dr)
    shallow = index.search(queries, 5, score="code", rerank=10)
    assert not np.array_equal(shallow[1], index.search(queries, 5, score="code")[1])


def test_set_engine_checks_its_options_at_once(filled_index, queries):
    with pytest.raises(ValueError, match="no option"):
        filled_index.set_engine("pruned", bogus=1)
    with pytest.raises(ValueError, match="unknown engine"):
        filled_index.set_engine("faiss")
    assert filled_index.search(queries, 3)[1].min() >= 0, "a refused engine leaves the last one in place"
