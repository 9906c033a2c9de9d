"""Search engines against a brute-force float64 reference, and through CSRIndex.

Exact engines must return the reference's best scores (tie-tolerant: the returned
scores equal the reference's top scores, and every returned row has the score it is
reported with); the approximate ``pruned`` engine must report exact scores for what it
returns and find most of the true top-n.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csr_index import SparseCodes
from csr_index.engines import ENGINES, PrunedEngine, QueryBatch, make_engine, resolve_engine_name
from csr_index.engines.base import sparse_query_arrays
from csr_index.engines.kernels import half_lut
from csr_index.engines.postings import ClusterLists, Postings

H = 96
K = 8

# (engine name, options): every configuration that must equal the reference on sparse queries
EXACT = [
    ("scipy", {}),
    ("inverted", {}),
    ("inverted", {"threads": 1}),
    ("pruned", {"query_cut": None, "list_cut": None, "candidates": None, "full_scan_below": 0}),
    ("torch", {"device": "cpu"}),
]
# ... and on queries with a dense part (a shortlist engine only reaches docs sharing a term)
EXACT_DENSE = [e for e in EXACT if e[0] != "pruned"]


def sparse(queries: SparseCodes, offset=None) -> QueryBatch:
    return QueryBatch(queries, offset=offset)


def dense(q: np.ndarray, offset=None, terms: int = K) -> QueryBatch:
    """A dense query batch whose terms are each row's ``terms`` largest positive coordinates."""
    lat = np.argsort(-q, axis=1)[:, :terms]
    val = np.take_along_axis(q, lat, axis=1)
    val[val < 0] = 0.0
    return QueryBatch(SparseCodes(lat.astype(np.uint16), val.astype(np.float32), q.shape[1]), dense=q, offset=offset)


def random_codes(n: int, h: int = H, k: int = K, seed: int = 0, empty_slots: bool = True,
                 dtype=np.float32) -> SparseCodes:
    """Codes like the adapter's: k distinct latents per row, values descending, some slots empty;
    latent use is skewed (a few "hub" latents fire often, as measured on real codes)."""
    rng = np.random.default_rng(seed)
    popularity = rng.zipf(1.5, h).astype(float)
    p = popularity / popularity.sum()
    idx = np.stack([rng.choice(h, k, replace=False, p=p) for _ in range(n)]).astype(np.uint16)
    val = np.sort(rng.exponential(size=(n, k)), axis=1)[:, ::-1]
    if empty_slots:
        val[:, k // 2 :] *= rng.random((n, k - k // 2)) < 0.7
    return SparseCodes(idx, np.ascontiguousarray(val, dtype=dtype), h)


def reference(queries, docs: SparseCodes, scale=None, offset=None) -> np.ndarray:
    """All (nq, n) scores in float64; -inf for docs a sparse query cannot reach."""
    z = docs.to_dense().astype(np.float64)
    sparse = isinstance(queries, SparseCodes)
    q = queries.to_dense().astype(np.float64) if sparse else np.asarray(queries, dtype=np.float64)
    scores = q @ z.T
    if offset is not None:
        scores += np.asarray(offset, dtype=np.float64)[:, None]
    if scale is not None:
        scores *= np.asarray(scale, dtype=np.float64)[None, :]
    if sparse:
        scores[((q != 0).astype(float) @ (z != 0).T.astype(float)) == 0] = -np.inf
    return scores


def assert_matches(D: np.ndarray, rows: np.ndarray, ref: np.ndarray, topn: int, tol: float = 1e-4) -> None:
    """Tie-tolerant equality with the reference's top ``topn``."""
    assert D.shape == rows.shape == (ref.shape[0], topn)
    assert D.dtype == np.float32 and rows.dtype == np.int64
    best = -np.sort(-ref, axis=1)[:, :topn]
    if best.shape[1] < topn:
        best = np.pad(best, ((0, 0), (0, topn - best.shape[1])), constant_values=-np.inf)
    assert np.array_equal(np.isfinite(best), rows >= 0), "result counts differ from the reference"
    ok = rows >= 0
    np.testing.assert_allclose(D[ok], best[ok], rtol=tol, atol=tol)
    assert np.all(D[~ok] == -np.inf)
    got = np.take_along_axis(ref, np.maximum(rows, 0), axis=1)
    np.testing.assert_allclose(D[ok], got[ok], rtol=tol, atol=tol)
    for r in rows:
        valid = r[r >= 0]
        assert len(np.unique(valid)) == len(valid), "a row is returned twice"


def recall_at(rows: np.ndarray, truth: np.ndarray) -> float:
    """Recall@topn of ``rows`` against the exact results ``truth`` (both (nq, topn), padded with -1):
    the mean share of each query's exact results that ``rows`` holds."""
    return float(np.mean([len(set(t[t >= 0].tolist()) & set(r[r >= 0].tolist())) / max(1, int((t >= 0).sum()))
                          for t, r in zip(truth, rows)]))


@pytest.fixture(scope="module")
def docs() -> SparseCodes:
    return random_codes(700, seed=0)


@pytest.fixture(scope="module")
def queries() -> SparseCodes:
    return random_codes(40, seed=1)


@pytest.fixture(scope="module")
def extras(docs, queries):
    rng = np.random.default_rng(2)
    return rng.uniform(0.5, 2.0, docs.n).astype(np.float32), rng.standard_normal(queries.n).astype(np.float32)


@pytest.mark.parametrize("name,options", EXACT, ids=lambda v: str(v))
@pytest.mark.parametrize("with_extras", [False, True])
def test_exact_engines_sparse_queries(name, options, with_extras, docs, queries, extras):
    scale, offset = extras if with_extras else (None, None)
    engine = make_engine(name, docs, **options)
    D, rows = engine.search(sparse(queries, offset), 15, scale)
    assert_matches(D, rows, reference(queries, docs, scale, offset), 15)


@pytest.mark.parametrize("name,options", EXACT, ids=lambda v: str(v))
def test_deleted_rows_are_never_returned(name, options, docs, queries, extras):
    scale, offset = extras
    skip = (np.arange(docs.n) % 3 == 0).astype(np.uint8)
    D, rows = make_engine(name, docs, **options).search(sparse(queries, offset), 15, scale, skip)
    ref = reference(queries, docs, scale, offset)
    ref[:, skip == 1] = -np.inf
    assert_matches(D, rows, ref, 15)
    assert not np.isin(rows, np.flatnonzero(skip)).any()


@pytest.mark.parametrize("name,options", EXACT_DENSE, ids=lambda v: str(v))
def test_exact_engines_dense_queries(name, options, docs, extras):
    scale, _ = extras
    rng = np.random.default_rng(3)
    q = rng.standard_normal((25, H)).astype(np.float32)
    offset = rng.standard_normal(25).astype(np.float32)
    engine = make_engine(name, docs, **options)
    D, rows = engine.search(dense(q, offset), 12, scale)
    assert_matches(D, rows, reference(q, docs, scale, offset), 12)
    skip = (np.arange(docs.n) % 2).astype(np.uint8)
    D, rows = engine.search(dense(q, offset), 12, scale, skip)
    ref = reference(q, docs, scale, offset)
    ref[:, skip == 1] = -np.inf
    assert_matches(D, rows, ref, 12)


@pytest.mark.parametrize("name,options", EXACT, ids=lambda v: str(v))
def test_padding_and_unreachable_docs(name, options):
    """More results asked than docs exist, a query that reaches nothing, and negative terms."""
    docs = random_codes(30, seed=4)
    q = random_codes(3, seed=5)
    values = q.values.copy()
    values[1] = 0.0  # an all-empty query reaches no doc
    values[2, 0] = -values[2, 0]  # negative query terms are allowed (asymmetric projections)
    q = SparseCodes(q.indices, values, q.h)
    D, rows = make_engine(name, docs, **options).search(sparse(q), 50)
    assert_matches(D, rows, reference(q, docs), 50)
    assert np.all(rows[1] == -1) and np.all(D[1] == -np.inf)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_empty_engine(name):
    docs = SparseCodes(np.empty((0, K), np.uint16), np.empty((0, K), np.float32), H)
    engine = make_engine(name, docs)
    D, rows = engine.search(sparse(random_codes(2, seed=6)), 4)
    assert D.shape == (2, 4) and np.all(rows == -1)
    D, rows = engine.search(dense(np.ones((2, H), np.float32)), 4)
    assert np.all(rows == -1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 60),
    nq=st.integers(1, 9),
    k=st.integers(1, 6),
    topn=st.integers(1, 70),
    seed=st.integers(0, 10_000),
    threads=st.sampled_from([1, 2]),
)
def test_inverted_equals_brute_force(n, nq, k, topn, seed, threads):
    """Invariant: the compiled inverted index is the brute force, whatever the shapes."""
    docs = random_codes(n, h=16, k=k, seed=seed)
    q = random_codes(nq, h=16, k=k, seed=seed + 1)
    scale = np.random.default_rng(seed).uniform(0.1, 3.0, n).astype(np.float32)
    D, rows = make_engine("inverted", docs, threads=threads).search(sparse(q), topn, scale)
    assert_matches(D, rows, reference(q, docs, scale), topn)


def test_threads_give_identical_results(docs, queries):
    one = make_engine("inverted", docs, threads=1).search(sparse(queries), 10)
    two = make_engine("inverted", docs, threads=2).search(sparse(queries), 10)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_float16_values_are_exact_for_float16_codes(queries):
    docs = random_codes(500, seed=7, dtype=np.float16)
    engine = make_engine("inverted", docs, values="float16")
    assert engine.postings.vals.dtype == np.uint16
    D, rows = engine.search(sparse(queries), 10)
    assert_matches(D, rows, reference(queries, docs), 10)
    D, rows = make_engine("pruned", docs, values="float16", query_cut=None, candidates=None,
                          full_scan_below=0).search(sparse(queries), 10)
    assert_matches(D, rows, reference(queries, docs), 10)


def test_half_lut_decodes_every_float16():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    got = half_lut()[bits]
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all()


def test_postings_hold_every_nonzero_once(docs):
    p = Postings.build(docs)
    assert p.indptr[-1] == len(p.docs) == int((docs.values != 0).sum())
    np.testing.assert_array_equal(p.lengths, np.bincount(docs.indices[docs.values != 0], minlength=H))
    for lat in range(H):
        lo, hi = p.indptr[lat], p.indptr[lat + 1]
        assert np.all(np.diff(p.docs[lo:hi]) > 0), f"list {lat} is not in doc order"
        np.testing.assert_array_equal(p.docs[lo:hi], np.nonzero((docs.indices == lat).any(1)
                                      & (np.where(docs.indices == lat, docs.values, 0) != 0).any(1))[0])


def test_sparse_query_arrays_order_terms_by_magnitude():
    q = SparseCodes(np.array([[3, 1, 2, 0]], np.uint16), np.array([[0.5, -2.0, 0.0, 1.0]], np.float32), 4)
    qptr, lat, val = sparse_query_arrays(q)
    np.testing.assert_array_equal(qptr, [0, 3])
    np.testing.assert_array_equal(lat, [1, 0, 3])
    np.testing.assert_array_equal(val, [-2.0, 1.0, 0.5])


# ------------------------------------------------------------------ pruned (approximate)


@pytest.fixture(scope="module")
def clustered():
    """Docs and queries whose codes come from a few topics, as real codes do."""
    rng = np.random.default_rng(8)
    topics = [rng.choice(256, 24, replace=False) for _ in range(10)]

    def draw(n: int) -> SparseCodes:
        idx, val = [], []
        for t in rng.integers(0, 10, n):
            lat = rng.choice(topics[t], 12, replace=False)
            lat[8:] = rng.choice(256, 4, replace=False)  # off-topic noise latents
            lat = np.unique(lat)  # a duplicate is dropped; its slot is filled by an unused latent, empty
            fill = np.setdiff1d(np.arange(256), lat)[: 12 - len(lat)]
            v = np.concatenate([rng.exponential(size=len(lat)), np.zeros(len(fill))])
            lat = np.concatenate([lat, fill])
            order = np.argsort(-v)
            idx.append(lat[order])
            val.append(v[order])
        return SparseCodes(np.array(idx, np.uint16), np.array(val, np.float32), 256)

    return draw(3000), draw(60)


def test_pruned_reports_exact_scores_and_high_recall(clustered):
    docs, q = clustered
    ref = reference(q, docs)
    engine = make_engine("pruned", docs, list_cut=2.0, candidates=200, full_scan_below=0)
    D, rows = engine.search(sparse(q), 10)
    ok = rows >= 0
    got = np.take_along_axis(ref, np.maximum(rows, 0), axis=1)
    np.testing.assert_allclose(D[ok], got[ok], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(D, axis=1)[np.isfinite(D[:, 1:])] <= 1e-6), "not sorted"
    truth = np.argsort(-ref, axis=1)[:, :10]
    recall = np.mean([len(set(t) & set(r)) / 10 for t, r in zip(truth, rows)])
    assert recall >= 0.8, recall


def test_pruned_recall_grows_with_its_knobs(clustered):
    docs, q = clustered
    truth = np.argsort(-reference(q, docs), axis=1)[:, :10]

    def recall(**opts) -> float:
        rows = make_engine("pruned", docs, full_scan_below=0, **opts).search(sparse(q), 10)[1]
        return float(np.mean([len(set(t) & set(r)) / 10 for t, r in zip(truth, rows)]))

    tight = recall(query_cut=1, list_cut=0.1, candidates=10)
    loose = recall(query_cut=None, list_cut=None, candidates=500)
    assert tight < loose and loose >= 0.95



def test_pruned_budget_scales_with_the_segment_share(clustered):
    """A segment holding a quarter of the rows gets a quarter of the candidate budget (never
    fewer than topn); exact engines ignore the share; a share outside (0, 1] is an error."""
    docs, q = clustered  # one term per query: a shortlist whose size shows in the results
    part = make_engine("pruned", docs, query_cut=1, candidates=200, full_scan_below=0).search(sparse(q), 10, share=0.25)
    alone = make_engine("pruned", docs, query_cut=1, candidates=50, full_scan_below=0).search(sparse(q), 10)
    np.testing.assert_array_equal(part[1], alone[1])
    tiny = make_engine("pruned", docs, query_cut=1, candidates=200, full_scan_below=0).search(sparse(q), 10, share=1e-6)
    floor = make_engine("pruned", docs, query_cut=1, candidates=10, full_scan_below=0).search(sparse(q), 10)
    np.testing.assert_array_equal(tiny[1], floor[1])
    full = make_engine("pruned", docs, query_cut=1, candidates=200, full_scan_below=0).search(sparse(q), 10)
    assert not np.array_equal(tiny[1], full[1])  # the share did change the budget
    exact = make_engine("inverted", docs)
    np.testing.assert_array_equal(exact.search(sparse(q), 10, share=0.1)[1], exact.search(sparse(q), 10)[1])
    with pytest.raises(ValueError, match="share"):
        exact.search(sparse(q), 10, share=0.0)

def test_pruned_dense_queries_take_a_shortlist(docs, extras):
    scale, _ = extras
    q = np.random.default_rng(9).standard_normal((10, H)).astype(np.float32)
    ref = reference(q, docs, scale)
    batch = dense(q, terms=H)  # every positive coordinate is a term
    D, rows = make_engine("pruned", docs, query_cut=None, candidates=None, full_scan_below=0).search(batch, 10, scale)
    # the shortlist holds every doc sharing a positive term, each scored exactly with the dense query
    reachable = (q > 0).astype(float) @ (docs.to_dense() != 0).T.astype(float) > 0
    assert_matches(D, rows, np.where(reachable, ref, -np.inf), 10)
    D, rows = make_engine("pruned", docs, candidates=50, full_scan_below=0).search(batch, 10, scale)
    full = make_engine("pruned", docs, candidates=50).search(batch, 10, scale)  # 700 docs: below the full-scan size
    assert_matches(*full, ref, 10)
    found = np.take_along_axis(ref, np.maximum(rows, 0), axis=1)
    np.testing.assert_allclose(D[rows >= 0], found[rows >= 0], rtol=1e-4, atol=1e-4)  # exact scores


def test_list_cut_reads_each_list_up_to_a_multiple_of_the_mean_length(clustered):
    docs, q = clustered
    engine = make_engine("pruned", docs, list_cut=0.5, full_scan_below=0)
    full = make_engine("inverted", docs).postings
    limit = int(np.ceil(0.5 * len(full.docs) / (full.lengths > 0).sum()))
    assert engine.list_limit == limit
    lists = engine.lists  # one cluster from row 0: the docs' offsets are the docs
    np.testing.assert_array_equal(np.diff(lists.indptr), np.minimum(full.lengths, limit))
    for lat in np.nonzero(full.lengths > limit)[0][:20]:  # a cut list keeps its strongest entries, in doc order
        kept = lists.docs[lists.indptr[lat]:lists.indptr[lat + 1]].astype(np.int64)
        assert np.all(np.diff(kept) > 0)
        values = full.vals[full.indptr[lat]:full.indptr[lat + 1]]
        strongest = np.sort(values)[::-1][:limit]
        assert values[np.isin(full.docs[full.indptr[lat]:full.indptr[lat + 1]], kept)].min() >= strongest[-1]
        levels = lists.vals[lists.indptr[lat]:lists.indptr[lat + 1]].astype(np.float32)
        np.testing.assert_allclose(np.sort(levels * lists.scale[lat]), np.sort(strongest),
                                   atol=lists.scale[lat] / 2 + 1e-7)
    # a cut shortlist is a subset of the uncut one's reach: every result shares a read latent
    D, rows = engine.search(sparse(q), 10)
    assert (rows[:, 0] >= 0).all()


def test_cluster_lists_store_offsets_in_clusters_and_levels_of_each_list(docs):
    """The compact lists hold the full lists' entries, in order: each doc as its offset from its
    cluster's first row (uint16), each value as a level 1..255 within half a step of the value."""
    starts = np.array([0, 100, 350, 351, docs.n])
    full = Postings.build(docs)
    lists = ClusterLists.build(full, starts)
    assert lists.docs.dtype == np.uint16 and lists.vals.dtype == np.uint8
    np.testing.assert_array_equal(lists.indptr, full.indptr)
    cluster = np.searchsorted(starts, full.docs, side="right") - 1
    np.testing.assert_array_equal(lists.docs.astype(np.int64) + starts[cluster], full.docs)
    lat = np.repeat(np.arange(H), np.diff(full.indptr))
    assert lists.vals.min() >= 1 and lists.vals.max() == 255
    np.testing.assert_allclose(lists.vals * lists.scale[lat], full.vals, atol=float(lists.scale.max()) / 2 + 1e-7)
    # a cluster of more rows than uint16 counts keeps int32 offsets
    one = Postings(np.array([0, 2]), np.array([5, 70_000], np.int32), np.array([0.5, 2.0], np.float32),
                   np.empty(0, np.float32))
    wide = ClusterLists.build(one, np.array([0, 70_001]))
    assert wide.docs.dtype == np.int32 and wide.docs.tolist() == [5, 70_000] and wide.vals.tolist() == [64, 255]


# The pruned engine scans every doc exactly below ``full_scan_below`` (4,096 by default), so a
# fixture smaller than that tests an exact scan unless the threshold is lowered. The tests below
# measure the shortlist path itself: recall@10 against the exact (inverted) engine's results above a
# floor, and a starved shortlist (one posting list, ten candidates) well below it, which an exact
# scan, blind to those knobs, would not be.
STARVED = {"query_cut": 1, "candidates": 10}


def pruned_recall(docs: SparseCodes, batch: QueryBatch, scale=None, **options) -> float:
    """Recall@10 of ``make_engine("pruned", docs, **options)`` against the exact inverted engine."""
    truth = make_engine("inverted", docs).search(batch, 10, scale)[1]
    return recall_at(make_engine("pruned", docs, **options).search(batch, 10, scale)[1], truth)


def pruned_queries(kind: str, sparse_queries: SparseCodes, seed: int) -> QueryBatch:
    """``"sparse"``: code x code queries; ``"dense"``: a dense query with its K largest coordinates as
    terms, as an asymmetric search is (only docs sharing one of those terms can be found)."""
    if kind == "sparse":
        return sparse(sparse_queries)
    return dense(np.random.default_rng(seed).standard_normal((sparse_queries.n, H)).astype(np.float32), terms=K)


@pytest.fixture(scope="module")
def large_docs() -> SparseCodes:
    """More docs than the pruned engine's default ``full_scan_below``: its defaults take the shortlist."""
    return random_codes(6000, seed=22)


@pytest.mark.parametrize("kind,floor", [("sparse", 0.95), ("dense", 0.7)])  # measured: 1.00, 0.785
def test_pruned_shortlist_below_the_full_scan_size(docs, queries, extras, kind, floor):
    """A small collection (700 docs) with ``full_scan_below=0`` and otherwise default options."""
    scale, _ = extras
    batch = pruned_queries(kind, queries, seed=15)
    assert docs.n < PrunedEngine(docs).full_scan_below
    assert pruned_recall(docs, batch, scale, **STARVED) == 1.0  # by default this size is scanned exactly
    recall = pruned_recall(docs, batch, scale, full_scan_below=0)
    assert recall >= floor, recall
    starved = pruned_recall(docs, batch, scale, full_scan_below=0, **STARVED)
    assert starved <= 0.5, starved  # measured: 0.17 sparse, 0.16 dense


@pytest.mark.parametrize("kind,floor", [("sparse", 0.95), ("dense", 0.8)])  # measured: 1.00, 0.9025
def test_pruned_defaults_above_the_full_scan_size(large_docs, kind, floor):
    """A collection above the default ``full_scan_below`` (6,000 docs), every option left at its default."""
    scale = np.random.default_rng(24).uniform(0.5, 2.0, large_docs.n).astype(np.float32)
    batch = pruned_queries(kind, random_codes(40, seed=23), seed=25)
    engine = make_engine("pruned", large_docs)
    assert large_docs.n >= engine.full_scan_below and engine.list_limit is not None  # its posting lists are cut
    recall = pruned_recall(large_docs, batch, scale)
    assert recall >= floor, recall
    starved = pruned_recall(large_docs, batch, scale, **STARVED)
    assert starved <= 0.6, starved  # measured: 0.39 sparse, 0.17 dense


@pytest.mark.parametrize("bad", [{"query_cut": 0}, {"candidates": -1}, {"list_cut": 0}, {"list_cut": "2"},
                                 {"threads": 0}])
def test_pruned_rejects_bad_options(docs, bad):
    with pytest.raises((ValueError, TypeError)):
        PrunedEngine(docs, **bad)


# ------------------------------------------------------------------ registry and torch


def test_registry_names_and_options(docs):
    assert resolve_engine_name("auto", "cpu") == "pruned"
    assert resolve_engine_name("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("faiss", docs)
    with pytest.raises(ValueError, match="no option"):
        make_engine("inverted", docs, candidates=3)
    assert make_engine("auto", docs, device="cpu").name == "pruned"


def test_wrong_query_width_is_rejected(docs):
    for name in ENGINES:
        engine = make_engine(name, docs)
        with pytest.raises(ValueError):
            engine.search(QueryBatch(random_codes(1), dense=np.ones((1, H + 1), np.float32)), 3)
        with pytest.raises(ValueError):
            engine.search(sparse(random_codes(1, h=H + 8)), 3)
        with pytest.raises(ValueError, match="skip"):
            engine.search(sparse(random_codes(1)), 3, skip=np.zeros(docs.n + 1, np.uint8))


def test_torch_engine_holds_a_sparse_csr_tensor(docs):
    engine = make_engine("torch", docs, device="cpu")
    assert engine.docs.layout == torch.sparse_csr and engine.docs.device.type == "cpu"
    assert engine.nbytes > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_engine_on_cuda_equals_cpu(docs, queries, extras):
    scale, offset = extras
    cpu = make_engine("inverted", docs).search(sparse(queries, offset), 10, scale)
    gpu = make_engine("torch", docs, device="cuda").search(sparse(queries, offset), 10, scale)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-4, atol=1e-4)
    assert_matches(*gpu, reference(queries, docs, scale, offset), 10)


# ------------------------------------------------------------------ through CSRIndex


@pytest.mark.parametrize("name", ["scipy", "inverted", "torch"])
@pytest.mark.parametrize("score,k", [("code", None), ("code", 4), ("asymmetric", 4), ("asymmetric", None)])
def test_index_results_do_not_depend_on_the_exact_engine(filled_index_factory, queries_dense, name, score, k):
    index = filled_index_factory()
    want = index.set_engine("scipy").search(queries_dense, 10, score=score, query_k=k)
    got = index.set_engine(name).search(queries_dense, 10, score=score, query_k=k)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    same = (got[1] == want[1]).mean()
    assert same >= 0.95  # ties aside


def test_index_pruned_engine_with_rerank(filled_index_factory, queries_dense):
    index = filled_index_factory(store_vectors=True)
    exact = index.set_engine("inverted").search(queries_dense, 5, score="code", rerank=50)
    # unbounded knobs: exact under code scoring; full_scan_below=0, or these 600 docs would be scanned exactly
    approx = index.set_engine("pruned", candidates=None, list_cut=None, full_scan_below=0).search(
        queries_dense, 5, score="code", rerank=50)
    np.testing.assert_allclose(approx[0], exact[0], rtol=1e-4, atol=1e-5)


def index_recall(index, xq: np.ndarray, score: str, rerank: int | None, **options) -> float:
    """Recall@10 of ``index`` searched with the pruned engine (``options``) against the exact inverted
    engine, both at the same ``score`` and ``rerank``."""
    truth = index.set_engine("inverted").search(xq, 10, score=score, rerank=rerank)[1]
    return recall_at(index.set_engine("pruned", **options).search(xq, 10, score=score, rerank=rerank)[1], truth)


# (score, floor): the toy adapter's asymmetric shortlist reaches few of the exact top 10 (a dense
# query finds only docs sharing one of its query_k latents), so its floors are low; a broken shortlist
# finds next to none
@pytest.mark.parametrize("score,floor", [("code", 0.9), ("asymmetric", 0.4)])  # measured: 1.00, 0.525
def test_index_pruned_shortlist_below_the_full_scan_size(filled_index_factory, queries_dense, score, floor):
    """The 600-doc index through ``set_engine("pruned", full_scan_below=0)``, other options default."""
    index = filled_index_factory()
    assert index_recall(index, queries_dense, score, None, **STARVED) == 1.0  # by default: an exact scan
    recall = index_recall(index, queries_dense, score, None, full_scan_below=0)
    assert recall >= floor, recall
    starved = index_recall(index, queries_dense, score, None, full_scan_below=0, **STARVED)
    assert starved <= recall - 0.15, (starved, recall)  # measured: code 0.425, asymmetric 0.19


@pytest.fixture(scope="module")
def large_index(make_index, embeddings):
    """A trained index (originals stored) holding 6,000 vectors in one segment: above the pruned
    engine's default ``full_scan_below``."""
    index = make_index(store_vectors=True)
    index.add(embeddings(6000, seed=5, norm_spread=True))
    return index


@pytest.mark.parametrize("score,rerank,floor", [  # measured: 1.00, 0.55, 0.9625, 0.43
    ("code", 0, 0.9), ("asymmetric", 0, 0.45), ("code", None, 0.85), ("asymmetric", None, 0.35)])
def test_index_pruned_defaults_above_the_full_scan_size(large_index, queries_dense, score, rerank, floor):
    """What a user runs: ``set_engine("pruned")`` with its defaults over more docs than
    ``full_scan_below``, with and without the default re-rank against the originals."""
    sizes = [seg.n for seg in large_index._store.snapshot.segments]
    assert sizes == [6000] and sizes[0] >= PrunedEngine(large_index.codes()).full_scan_below
    recall = index_recall(large_index, queries_dense, score, rerank)
    assert recall >= floor, recall
    starved = index_recall(large_index, queries_dense, score, rerank, **STARVED)
    assert starved <= recall - 0.15, (starved, recall)  # measured: 0.19, 0.04, 0.32, 0.17


def test_index_engine_choice_is_validated(make_index):
    with pytest.raises(ValueError, match="unknown engine"):
        make_index().set_engine("nope")
    index = make_index()
    assert index.set_engine("pruned", candidates=4) is index


@pytest.fixture(scope="module")
def queries_dense(embeddings) -> np.ndarray:
    return embeddings(16, seed=11, norm_spread=True)


# ------------------------------------------------------------------ re-ranking against the originals


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("threads", [1, 2])
def test_rerank_equals_numpy_reference(dtype, threads):
    from csr_index.rerank import rerank_topn

    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((400, 24)).astype(dtype)
    q = rng.standard_normal((15, 24)).astype(np.float32)
    cand = np.stack([rng.choice(400, 30, replace=False) for _ in range(15)])
    cand[0, 3:] = -1  # fewer candidates than asked for
    cand[1, :] = -1
    got = rerank_topn(q, cand, vectors, 8, threads=threads)
    exact = vectors.astype(np.float64) @ q.astype(np.float64).T  # (n, nq)
    full = np.full((15, 400), -np.inf)
    ok = cand >= 0
    np.put_along_axis(full, np.maximum(cand, 0), np.where(ok, exact.T[np.arange(15)[:, None], np.maximum(cand, 0)],
                                                          -np.inf), axis=1)
    full[:, 0] = np.where((cand == 0).any(1), exact.T[:, 0], -np.inf)
    assert_matches(*got, full, 8)


@pytest.mark.parametrize("nq", [1, 7, 3000])
def test_exact_scan_equals_numpy_in_bounded_blocks(nq, monkeypatch):
    import csr_index.rerank as rr

    monkeypatch.setattr(rr, "SCAN_ELEMENTS", 4096)  # many small blocks of rows and of queries
    rng = np.random.default_rng(14)
    vectors = rng.standard_normal((2500, 16)).astype(np.float16)
    q = rng.standard_normal((nq, 16)).astype(np.float32)
    skip = (rng.random(2500) < 0.2).astype(np.uint8)
    D, rows = rr.exact_topn(q, vectors, 9, skip)
    ref = q.astype(np.float64) @ vectors.astype(np.float64).T
    ref[:, skip == 1] = -np.inf
    assert_matches(D, rows, ref, 9)


def test_int8_originals_keep_scores_close():
    from csr_index.rerank import quantize_int8, rerank_topn

    rng = np.random.default_rng(13)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    codes, scales = quantize_int8(x)
    assert codes.dtype == np.int8 and scales.shape == (300,)
    assert np.all(np.abs(codes * scales[:, None] - x) <= scales[:, None] / 2 + 1e-6)
    q = rng.standard_normal((5, 32)).astype(np.float32)
    cand = np.tile(np.arange(300), (5, 1))
    D8, rows8 = rerank_topn(q, cand, codes, 5, scales)
    exact = (x[rows8] * q[:, None, :]).sum(-1)
    np.testing.assert_allclose(D8, exact, atol=0.05 * np.abs(exact).max())
    with pytest.raises(ValueError, match="scale"):
        rerank_topn(q, cand, codes, 5)
    with pytest.raises(ValueError, match="exceeds"):
        rerank_topn(q, cand + 1, x, 5)


def test_engine_follows_added_vectors(make_index, corpus, queries_dense):
    index = make_index()
    index.set_engine("pruned", candidates=None)
    index.add(corpus[:300])
    D, I = index.search(queries_dense, 5, score="code")
    assert I.max() < 300
    index.add(corpus[300:])
    D, I = index.search(queries_dense, 5, score="code")
    assert (I >= 300).any()


def test_constructor_rejects_unknown_engine():
    from csr_index import CSRIndex

    with pytest.raises(ValueError, match="unknown engine"):
        CSRIndex(8, k=2, engine="hnsw")


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [1, 7, 50, 400, 5000])
def test_shortlist_keeps_the_best_partial_scores(seed, budget, clustered):
    """The pruned engine's linear-time selection equals a full sort (ties: lower doc first),
    whatever the sampled threshold does (a miss returns -1, then the exact pass answers): touched
    docs in a few runs, ties, skips, a scale; over every doc, or over the docs of some clusters only
    (the rest never selected nor cleared)."""
    from csr_index.engines.shortlist import SAMPLE_CHUNKS, _select

    rng = np.random.default_rng(seed)
    n = 3000
    acc = np.zeros(n, np.float32)
    touched = rng.random(n) < [0.02, 0.3, 1.0, 0.5, 0.1, 0.7][seed]
    acc[touched] = np.round(rng.normal(size=touched.sum()), 1 if seed == 4 else 6)  # seed 4: many ties
    if seed == 3:  # the sampled runs hold the best scores: the sampled threshold passes too few docs
        acc[np.arange(SAMPLE_CHUNKS)[:, None] * n // SAMPLE_CHUNKS + np.arange(max(1, n // 1024))] += 10
        touched = acc != 0
    acc[touched & (acc == 0)] = 0.5
    scale = rng.uniform(0.5, 2.0, n).astype(np.float32) if seed % 2 else np.empty(0, np.float32)
    skip = (rng.random(n) < 0.1).astype(np.uint8) if seed in (1, 5) else np.empty(0, np.uint8)
    off = np.float32(0.25)
    score = (acc + off) * (scale if len(scale) else 1)
    live = touched & ((skip == 0) if len(skip) else True)
    starts, probes = np.array([0, n]), np.array([0])
    if clustered:
        starts, probes = np.linspace(0, n, 11).astype(np.int64), np.array([1, 2, 5, 9])
        inside = np.zeros(n, bool)
        for c in probes:
            inside[starts[c] : starts[c + 1]] = True
        live &= inside
    order = np.lexsort((np.arange(n), -score))
    want = np.sort(order[live[order]][:budget])
    rows, scores = np.empty(n + 1, np.int32), np.empty(n + 1, np.float32)
    work = acc.copy()
    got = _select(work, off, scale, skip, budget, probes, starts, rows, scores, False)
    if clustered:  # only the probed clusters' rows are cleared (the lists wrote no other)
        assert not work[inside].any() and (work[~inside] == acc[~inside]).all()
    else:
        assert not work.any()  # left cleared for the next query, even when the threshold missed
    if seed == 3 and budget == 400 and not clustered:
        assert got == -1  # the sampled docs are the best: the threshold passes too few, the caller redoes it
    if got < 0:
        got = _select(acc.copy(), off, scale, skip, budget, probes, starts, rows, scores, True)
    np.testing.assert_array_equal(rows[:got], want)  # in doc order (the exact scores read rows in it)


def test_pruned_candidates_grow_with_the_collection():
    """The candidate budget is fixed up to 100k docs and grows as (n / 100k) ** candidates_growth
    beyond (x5 at 1M by default); a segment takes its share; growth 0 keeps it fixed."""
    from csr_index.engines.pruned import PrunedEngine

    engine = PrunedEngine(random_codes(6000))
    assert engine.shortlist_size(10) == 800  # 6,000 docs: below the reference size
    assert engine.shortlist_size(10, share=6000 / 1_000_000) == int(np.ceil(800 * 10 ** 0.7 * 0.006))  # 25
    assert engine.shortlist_size(10, share=6000 / 50_000) == int(np.ceil(800 * 0.12))  # 96: below 100k, no growth
    assert engine.shortlist_size(50, share=0.001) == 50  # never fewer than topn
    fixed = PrunedEngine(random_codes(6000), candidates_growth=0)
    assert fixed.shortlist_size(1, share=0.006) == int(np.ceil(800 * 0.006))  # 5
    assert PrunedEngine(random_codes(6000), candidates=None).shortlist_size(10, share=0.006) == 6000
    with pytest.raises(ValueError, match="candidates_growth"):
        PrunedEngine(random_codes(100), candidates_growth=1.5)
