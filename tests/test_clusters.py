"""Clustered segments: rows ordered by cluster at merge, a shortlist over the nearest clusters."""

from __future__ import annotations

import numpy as np
import pytest

import csr_index.segment as segment_mod
from csr_index import CSRIndex
from csr_index.clusters import CLUSTER_ROWS, Clusters, cluster_order, nearest_clusters
from csr_index.codes import SparseCodes
from csr_index.engines import make_engine
from csr_index.engines.base import QueryBatch
from csr_index.errors import CorruptIndexError


@pytest.fixture
def small_clusters(monkeypatch):
    """Merges of 400 rows or more may cluster."""
    monkeypatch.setattr(segment_mod, "CLUSTER_MIN_ROWS", 400)


def clustered_index(make_index, rows_per_cluster=50):
    """A trained, empty index whose merges cluster (about 50 rows per cluster)."""
    index = make_index(store_vectors=True)
    return CSRIndex.from_encoder(index.encoder, cluster_rows=rows_per_cluster)


def test_cluster_order_groups_near_vectors(embeddings):
    x = embeddings(2000, seed=3, clusters=8)
    order, cl = cluster_order(x, None, 50)
    assert sorted(order.tolist()) == list(range(2000))
    assert cl.start[0] == 0 and cl.start[-1] == 2000 and (np.diff(cl.start) > 0).all()
    xs = x[order] / np.linalg.norm(x[order], axis=1, keepdims=True)
    labels = cl.labels()
    # every row is nearest (by inner product) to its own cluster's centroid, as assigned
    assert (np.argmax(xs @ cl.centroids.T, axis=1) == labels).mean() > 0.99
    # a cluster is tighter than the whole set
    own = np.mean(np.sum(xs * cl.centroids[labels], axis=1))
    whole = xs.mean(0) / np.linalg.norm(xs.mean(0))
    assert cl.count >= 20 and own > np.mean(xs @ whole) + 0.3
    again = cluster_order(x, None, 50)[0]
    assert (again == order).all()  # deterministic


def test_nearest_clusters_by_centroid():
    cl = Clusters(np.array([0, 3, 5, 9]), np.eye(3, dtype=np.float32))
    q = np.array([[0.1, 0.0, 1.0], [0.0, 1.0, 0.5]], np.float32)
    assert nearest_clusters(cl, q, 0.5).tolist() == [[0, 2], [1, 2]]  # ceil(1.5) = 2 of 3, ascending
    assert nearest_clusters(cl, q, 0.1).tolist() == [[2], [1]]
    assert nearest_clusters(cl, q, 1.0).tolist() == [[0, 1, 2]] * 2


def test_pruned_engine_shortlists_only_the_probed_clusters():
    rng = np.random.default_rng(0)
    n, h = 3000, 64
    idx = np.argsort(rng.random((n, h)), axis=1)[:, :6].astype(np.int32)
    codes = SparseCodes(idx, rng.random((n, 6)).astype(np.float32), h)
    q = SparseCodes(idx[:5], np.ones((5, 6), np.float32), h)
    starts = np.array([0, 100, 700, 2000, 2300, 3000])
    engine = make_engine("pruned", codes, clusters=starts, full_scan_below=0, candidates=100)
    plain_engine = make_engine("pruned", codes, full_scan_below=0, candidates=100)
    assert engine.nbytes > plain_engine.nbytes  # the runs table
    probes = np.array([[1, 3]] * 5)  # rows 100:700 and 2000:2300
    D, rows = engine.search(QueryBatch(q), 10, probes=probes)
    inside = ((rows >= 100) & (rows < 700)) | ((rows >= 2000) & (rows < 2300))
    assert (rows >= 0).all() and inside.all()
    # within the probed clusters the engine finds the top-10 an exact scan of those rows finds
    exact = make_engine("inverted", codes).search(QueryBatch(q), n)[1]
    for i in range(5):
        allowed = [r for r in exact[i] if 100 <= r < 700 or 2000 <= r < 2300][:10]
        assert len(set(allowed) & set(rows[i].tolist())) >= 8
    # every cluster probed: the unclustered engine's answer
    whole = engine.search(QueryBatch(q), 10, probes=np.array([[0, 1, 2, 3, 4]] * 5))
    plain = plain_engine.search(QueryBatch(q), 10)
    assert (whole[1] == plain[1]).all() and np.allclose(whole[0], plain[0])
    with pytest.raises(ValueError, match="ascending"):
        engine.search(QueryBatch(q), 10, probes=np.array([[3, 1]] * 5))
    with pytest.raises(ValueError, match="ascending"):
        engine.search(QueryBatch(q), 10, probes=np.array([[1, 5]] * 5))
    with pytest.raises(ValueError, match="no clusters"):
        plain_engine.search(QueryBatch(q), 10, probes=probes)
    with pytest.raises(ValueError, match="non-decreasing row starts"):
        make_engine("pruned", codes, clusters=np.array([0, 10, 5, 3000]))
    with pytest.raises(ValueError, match="no option"):  # clusters come from the segment, not the user
        from csr_index.engines import engine_options
        engine_options("pruned", {"clusters": starts})


def test_merged_segment_is_clustered_and_saved(small_clusters, make_index, embeddings, tmp_path):
    index = clustered_index(make_index)
    x = embeddings(900, seed=0, norm_spread=True)  # the adapter's training data and more
    index.add(x[:450])
    index.add(x[450:])  # the merge of two equal segments clusters the rows
    index.compact()
    seg = index._store.snapshot.segments[0]
    assert seg.clusters is not None and seg.clusters.count >= 10
    assert sorted(seg.ids.tolist()) == list(range(900))
    assert index.stats()["memory_clusters_bytes_per_vector"] == round(seg.clusters.nbytes / 900, 1)
    # the rows moved with their ids: a stored vector still answers for its own id
    D, ids = index.search(x[:20], topk=1, score="exact")
    assert (ids[:, 0] == np.arange(20)).all()
    # the default search over every cluster finds what the unclustered index finds
    index.set_engine("pruned", probe_fraction=1.0, full_scan_below=0)
    flat = CSRIndex.from_encoder(index.encoder)
    flat.add(x)
    flat.set_engine("pruned", full_scan_below=0)
    got, want = index.search(x[:30], topk=5)[1], flat.search(x[:30], topk=5)[1]
    assert (want >= 0).mean() > 0.9
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, want)]) > 0.95
    # a save keeps the clusters; the centroids, the means of each cluster's rows, are recomputed from them
    index.save(tmp_path / "i")
    loaded = CSRIndex.load(tmp_path / "i")
    assert loaded.cluster_rows == 50
    lseg = loaded._store.snapshot.segments[0]
    assert (lseg.clusters.start == seg.clusters.start).all()
    assert np.allclose(lseg.clusters.centroids, seg.clusters.centroids, atol=1e-5)
    loaded.set_engine("pruned", probe_fraction=0.2, full_scan_below=0)
    index.set_engine("pruned", probe_fraction=0.2, full_scan_below=0)
    assert (loaded.search(x[:30], topk=5)[1] == index.search(x[:30], topk=5)[1]).all()


def test_few_probes_lose_recall_many_recover_it(small_clusters, make_index, embeddings):
    index = clustered_index(make_index)
    x = embeddings(2400, seed=0, norm_spread=True)  # the adapter's training data and more
    index.add(x[:1200])
    index.add(x[1200:])
    index.compact()
    assert index._store.snapshot.segments[0].clusters is not None
    q = x[::60] + 0.3 * np.random.default_rng(1).standard_normal((40, x.shape[1])).astype(np.float32)
    truth = index.search(q, topk=10, score="exact")[1]
    recall = {}
    for fraction in (0.05, 1.0):
        index.set_engine("pruned", probe_fraction=fraction, full_scan_below=0)
        got = index.search(q, topk=10)[1]
        recall[fraction] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert recall[1.0] > 0.9
    assert recall[0.05] < recall[1.0]


def test_corrupt_cluster_labels_are_refused():
    with pytest.raises(CorruptIndexError, match="non-decreasing"):
        Clusters.from_labels(np.array([0, 1, 0]), np.ones((3, 4), np.float16), None, "here")


def test_probe_fraction_is_checked(embeddings):
    codes = SparseCodes(np.zeros((4, 2), np.int32), np.ones((4, 2), np.float32), 8)
    with pytest.raises(ValueError, match="probe_fraction"):
        make_engine("pruned", codes, probe_fraction=0.0)


def test_clustering_is_on_by_default_and_compact_clusters_one_big_segment(small_clusters, make_index, embeddings,
                                                                          tmp_path):
    x = embeddings(900, seed=0, norm_spread=True)
    assert CSRIndex(8).cluster_rows == CLUSTER_ROWS
    plain = CSRIndex.from_encoder(make_index(store_vectors=True).encoder, cluster_rows=None)  # off
    plain.add(x[:450])
    plain.add(x[450:])
    plain.compact()
    assert plain.cluster_rows is None and plain._store.snapshot.segments[0].clusters is None
    plain.save(tmp_path / "plain")
    loaded = CSRIndex.load(tmp_path / "plain")
    assert loaded.cluster_rows is None  # a save without the setting loads as off
    with pytest.raises(ValueError, match="cluster_rows"):
        loaded.cluster_rows = 0
    loaded.cluster_rows = 50  # turned on later: compact clusters its one big segment
    loaded.compact()
    assert loaded._store.snapshot.segments[0].clusters.count >= 10
    np.testing.assert_array_equal(loaded.search(x[:20], 5)[1][:, 0], plain.search(x[:20], 5)[1][:, 0])
    index = clustered_index(make_index)
    index.add(x)  # one add: one segment, no merge yet
    assert index._store.snapshot.segments[0].clusters is None
    index.compact()  # compacting a big unclustered segment clusters it
    seg = index._store.snapshot.segments[0]
    assert seg.clusters is not None and sorted(seg.ids.tolist()) == list(range(900))
    index.compact()  # and is then a no-op
    assert index._store.snapshot.segments[0] is seg
    index.remove_ids(np.arange(0, 900, 2))
    index.compact()  # a merge that drops rows clusters again
    assert index._store.snapshot.segments[0].clusters.start[-1] == 450
    with pytest.raises(ValueError, match="cluster_rows"):
        CSRIndex(8, cluster_rows=0)
