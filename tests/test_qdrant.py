"""The Qdrant bridge against real engines: qdrant-client local mode and qdrant-edge-py.

One small CSR index is trained on SciFact per module (quality is irrelevant for
parity). Local mode is a pure-Python scan (~0.15 s per query at 5k points), so it
gets a few queries; qdrant-edge gets all 300.
"""

from __future__ import annotations

import copy

import json
import random
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from click.testing import CliRunner  # noqa: E402
from httpx import Headers  # noqa: E402
from qdrant_client import QdrantClient, models  # noqa: E402
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse  # noqa: E402

from csr_index import CSRIndex, SparseCodes  # noqa: E402
from csr_index.cli.qdrant import export_qdrant, search_qdrant  # noqa: E402
from csr_index.integrations import qdrant as cq  # noqa: E402
from csr_index.io import read_embeddings  # noqa: E402
from csr_index.engines.base import top_entries  # noqa: E402
from qdrant_fixtures import (CORPUS, QUERIES, TOL, adapter_config, qvecs, requires_scifact,  # noqa: E402, F401
                             run_and_kill, scifact)

LOCAL_NQ = 20

pytestmark = requires_scifact


# ------------------------------------------------------------------ fixtures
# scifact, qvecs: see qdrant_fixtures


@pytest.fixture(scope="module")
def sf_index(scifact):
    idx = CSRIndex(scifact.vectors.shape[1], k=32, store_vectors=True, config=adapter_config())
    idx.train(scifact.vectors)
    # shuffled, sparse ids: catches any confusion between ids and storage rows
    ids = np.random.default_rng(0).permutation(len(scifact.vectors)).astype(np.int64) * 11 + 5
    idx.add_with_ids(scifact.vectors, ids, keys=scifact.keys)
    # Qdrant scores every doc sharing a latent with the query code exactly: compare with the exact engine
    return idx.set_engine("inverted")


@pytest.fixture(scope="module")
def index_dir(sf_index, tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "scifact.csr"
    sf_index.save(path)
    return path


@pytest.fixture(scope="module")
def local(sf_index):
    client = QdrantClient(":memory:")
    report = cq.export(sf_index, client, "scifact", payload=CORPUS, payload_columns=["id", "text"], dense=True,
                       batch_size=500)
    assert report.uploaded == report.points_count == sf_index.ntotal
    yield client
    client.close()


@pytest.fixture(scope="module")
def edge(sf_index, tmp_path_factory):
    path = tmp_path_factory.mktemp("edge") / "shard"
    with cq.EdgeCollection.for_index(path, sf_index, dense=True) as shard:
        report = cq.export(sf_index, shard, payload=CORPUS, payload_columns=["id"], dense=True)
        assert report.uploaded == report.points_count == sf_index.ntotal
        yield shard


def subset_index(index: CSRIndex, scifact, n: int) -> CSRIndex:
    """The first n docs under the same adapter (no retraining)."""
    sub = CSRIndex.from_encoder(index.encoder, store_vectors=True, engine="inverted")  # exact, as Qdrant
    sub.add_with_ids(scifact.vectors[:n], np.arange(n, dtype=np.int64) * 3 + 1, keys=scifact.keys[:n])
    return sub


# ------------------------------------------------------------------- helpers
def assert_same_results(D, I, Dref, Iref, tol=TOL):
    """Equal top-k up to ties: the score sequences match, and ids may differ only where
    scores tie (within ``tol``), including a tie with the last (boundary) score."""
    assert D.shape == Dref.shape and I.shape == Iref.shape
    np.testing.assert_allclose(D, Dref, rtol=0, atol=tol)
    for q in range(len(I)):
        got = {int(i): float(s) for i, s in zip(I[q], D[q]) if i >= 0}
        ref = {int(i): float(s) for i, s in zip(Iref[q], Dref[q]) if i >= 0}
        assert len(got) == len(ref), f"query {q}: {len(got)} results, expected {len(ref)}"
        for i in got.keys() & ref.keys():
            assert abs(got[i] - ref[i]) <= tol, f"query {q}, id {i}: score {got[i]} vs {ref[i]}"
        boundary = min(ref.values()) if ref else None
        for i in got.keys() ^ ref.keys():
            s = got.get(i, ref.get(i))
            assert abs(s - boundary) <= tol, f"query {q}: id {i} (score {s}) differs and is not a boundary tie"


def prepared(index, x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True) if index.metric == "cosine" else x


def rrf_reference(index, xq, limit, k=2):
    """Reciprocal rank fusion (1 / (k + rank), rank from 0) of CSRIndex's code ranking and exact dense search."""
    _, Is = index.search(xq, limit, score="code", rerank=0)
    dense = prepared(index, xq) @ index.vectors().astype(np.float32).T
    _, rows = top_entries(dense, limit)
    Id = np.where(rows >= 0, np.asarray(index.ids)[np.maximum(rows, 0)], -1)
    D = np.full((len(xq), limit), -np.inf, dtype=np.float32)
    I = np.full((len(xq), limit), -1, dtype=np.int64)
    for q in range(len(xq)):
        fused: dict[int, float] = {}
        for ranking in (Is[q], Id[q]):
            for rank, i in enumerate(ranking):
                if i >= 0:
                    fused[int(i)] = fused.get(int(i), 0.0) + 1.0 / (k + rank)
        best = sorted(fused.items(), key=lambda kv: -kv[1])[:limit]
        for j, (i, s) in enumerate(best):
            I[q, j], D[q, j] = i, s
    return D, I


def all_points(client, name, vector="csr"):
    out, offset = {}, None
    while True:
        records, offset = client.scroll(name, limit=1000, offset=offset, with_vectors=[vector], with_payload=False)
        for r in records:
            v = r.vector[vector]
            out[int(r.id)] = (list(v.indices), [round(x, 6) for x in v.values])
        if offset is None:
            return out


# --------------------------------------------------------------------- parity
def test_local_mode_equals_csrindex_code_search(sf_index, local, qvecs):
    xq = qvecs[:LOCAL_NQ]
    D, I = cq.search(sf_index, local, "scifact", xq, 10, rerank=0)
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert_same_results(D, I, *sf_index.search(xq, 10, score="code", rerank=0))


def test_local_mode_rerank_equals_csrindex_rerank(sf_index, local, qvecs):
    xq = qvecs[:10]
    D, I = cq.search(sf_index, local, "scifact", xq, 10, rerank=50)
    assert_same_results(D, I, *sf_index.search(xq, 10, score="code", rerank=50))


def test_edge_equals_csrindex_code_search(sf_index, edge, qvecs):
    D, I = cq.search(sf_index, edge, None, qvecs, 10, rerank=0)
    assert_same_results(D, I, *sf_index.search(qvecs, 10, score="code", rerank=0))
    # adaptive k: fewer active latents per query
    D, I = cq.search(sf_index, edge, None, qvecs, 10, query_k=8, rerank=0)
    assert_same_results(D, I, *sf_index.search(qvecs, 10, query_k=8, score="code", rerank=0))


def test_searcher_one_query_at_a_time_equals_batch_search(sf_index, edge, qvecs):
    """A Searcher (checked once; a single query takes the compiled encoding) answers one query at a
    time what one batch search answers, with and without the server's dense re-rank."""
    encoder = sf_index.encoder  # the adapter alone: server-side re-rank by default
    for options in ({"rerank": 0}, {}):
        searcher = cq.Searcher(encoder, edge, None, **options)
        rows = [searcher.search(qvecs[i : i + 1], 10) for i in range(40)]
        D, I = np.vstack([d for d, _ in rows]), np.vstack([i for _, i in rows])
        assert_same_results(D, I, *cq.search(encoder, edge, None, qvecs[:40], 10, **options))
    assert_same_results(D, I, *sf_index.search(qvecs[:40], 10, score="code", rerank=300))
    with pytest.raises(ValueError, match="NaN or inf"):
        searcher.search(np.full((1, encoder.d), np.nan, dtype=np.float32), 10)


def test_edge_exact_rerank_equals_csrindex(sf_index, edge, qvecs):
    D, I = cq.search(sf_index, edge, None, qvecs, 10, rerank=100)
    assert_same_results(D, I, *sf_index.search(qvecs, 10, score="code", rerank=100))
    # default rerank is CSRIndex's default (auto when originals are stored)
    D, I = cq.search(sf_index, edge, None, qvecs, 10)
    assert_same_results(D, I, *sf_index.search(qvecs, 10, score="code"))


def test_edge_asymmetric_rescoring_equals_csrindex(sf_index, edge, qvecs):
    exact = copy.deepcopy(sf_index).set_engine("inverted")  # the asymmetric score of every doc
    # every doc sharing a latent with the query code is a candidate: Qdrant's shortlist then holds
    # CSRIndex's exact asymmetric top-10 unless one of those shares no latent with the query at all
    D, I = cq.search(sf_index, edge, None, qvecs, 10, score="asymmetric", rerank=0, candidates=sf_index.ntotal)
    Dx, Ix = exact.search(qvecs, 10, score="asymmetric", rerank=0)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ix)]) >= 0.99
    # and every returned score is CSRIndex's asymmetric score of that id
    Dall, Iall = exact.search(qvecs[:50], sf_index.ntotal, score="asymmetric", rerank=0)
    for q in range(50):
        full = dict(zip(Iall[q].tolist(), Dall[q].tolist()))
        np.testing.assert_allclose(D[q], [full[i] for i in I[q]], rtol=0, atol=1e-4)
    # re-ranked: (nearly) the same results as CSRIndex's own asymmetric top-100 re-ranked exactly
    D, I = cq.search(sf_index, edge, None, qvecs, 10, score="asymmetric", rerank=100, candidates=sf_index.ntotal)
    Dx, Ix = exact.search(qvecs, 10, score="asymmetric", rerank=100)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ix)]) >= 0.98


def test_rescore_code_matches_qdrant_scores(sf_index, edge, qvecs):
    D, I = cq.search(sf_index, edge, None, qvecs, 20, rerank=0)
    Dc, Ic = sf_index.rescore(qvecs, I, 20, score="code")
    assert_same_results(Dc, Ic, D, I)


def test_hybrid_rrf_edge_and_local(sf_index, edge, local, qvecs):
    C = 50
    Dref, Iref = rrf_reference(sf_index, qvecs, C)
    # RRF ties are frequent (same ranks, other lists): compare up to ties
    D, I = cq.search(sf_index, edge, None, qvecs, C, rerank=0, hybrid=True)
    assert_same_results(D, I, Dref, Iref, tol=1e-6)
    Dl, Il = cq.search(sf_index, local, "scifact", qvecs[:5], C, rerank=0, hybrid=True)
    assert_same_results(Dl, Il, Dref[:5], Iref[:5], tol=1e-6)
    # the fused candidates can be re-ranked exactly like any other shortlist
    D, I = cq.search(sf_index, edge, None, qvecs, 10, hybrid=True, rerank=C)
    Dx, Ix = sf_index.rescore(qvecs, Iref, 10, score="exact")
    assert_same_results(D, I, Dx, Ix)


def test_payload_from_parquet(sf_index, local, scifact):
    ids = np.asarray(sf_index.ids)[[0, 17, 4000]].tolist()
    text = dict(zip(scifact.table.column("id").to_pylist(), scifact.table.column("text").to_pylist()))
    for record in local.retrieve("scifact", ids=ids, with_payload=True):
        key = sf_index.keys_of([record.id])[0]
        assert record.payload == {"id": key, "text": text[key], "key": key}  # "key" even beside a string join column
    np.testing.assert_array_equal(cq.fetch_payload(local, "scifact", [ids]), sf_index.keys_of([ids]))


def test_metadata_written(sf_index, local, edge):
    meta = local.get_collection("scifact").config.metadata["csr_index"]
    assert meta == cq.index_metadata(sf_index, "csr", "dense")
    assert edge.metadata() == cq.index_metadata(sf_index, "csr", "dense")


# ---------------------------------------------------------- idempotence/resume
def test_reexport_is_idempotent(sf_index, edge, local):
    report = cq.export(sf_index, edge, dense=True)
    assert (report.uploaded, report.skipped, report.points_count) == (0, sf_index.ntotal, sf_index.ntotal)
    report = cq.export(sf_index, edge, dense=True, resume=False, batch_size=1024)
    assert (report.uploaded, report.points_count) == (sf_index.ntotal, sf_index.ntotal)
    report = cq.export(sf_index, local, "scifact", dense=True, batch_size=1000)
    assert (report.uploaded, report.points_count) == (0, sf_index.ntotal)


def test_partial_export_resumes(sf_index, tmp_path):
    codes, ids = sf_index.codes(), np.asarray(sf_index.ids)
    part = np.random.default_rng(1).choice(len(ids), 2000, replace=False)
    with cq.EdgeCollection(tmp_path / "shard") as shard:
        cq.export_codes(SparseCodes(codes.indices[part], codes.values[part], codes.h), ids[part], shard,
                        normalize=True)
        assert shard.count() == 2000
        report = cq.export(sf_index, shard, batch_size=300)
        assert (report.uploaded, report.skipped, report.points_count) == (sf_index.ntotal - 2000, 2000, sf_index.ntotal)


# the child run by qdrant_fixtures.run_and_kill: export a saved index into an edge shard or local-mode path
EXPORT = r"""
from csr_index import CSRIndex
from csr_index.integrations import qdrant as cq

index_path, kind, where, batch_size = args
index = CSRIndex.load(index_path)
if kind == "edge":
    target, name = cq.EdgeCollection(where), None
else:
    from qdrant_client import QdrantClient
    target, name = QdrantClient(path=where), "docs"
cq.export(index, target, name, batch_size=int(batch_size))
print("FINISHED", flush=True)
"""


def test_killed_edge_export_resumes(sf_index, index_dir, qvecs, tmp_path):
    where = tmp_path / "shard"
    run_and_kill(EXPORT, 6, 6, [index_dir, "edge", where, 400])  # killed while it holds after batch 6
    with cq.EdgeCollection(where) as shard:
        partial = shard.count()
        assert partial == 6 * 400  # the WAL kept every acknowledged batch
        report = cq.export(sf_index, shard, batch_size=400)
        assert (report.uploaded, report.skipped) == (sf_index.ntotal - partial, partial)
        assert shard.count() == sf_index.ntotal
        D, I = cq.search(sf_index, shard, None, qvecs, 10, rerank=0)
    assert_same_results(D, I, *sf_index.search(qvecs, 10, score="code", rerank=0))


def test_killed_local_export_resumes(sf_index, scifact, qvecs, tmp_path):
    # local mode with path= commits every point to SQLite (~50-800 points/s): keep it small
    sub = subset_index(sf_index, scifact, 200)
    sub.save(tmp_path / "sub.csr")
    where = tmp_path / "local"
    # killed at a random moment after batch 3: inside the upload of batch 4 or 5 (local mode
    # commits point by point), or, on a fast disk, while the child holds after batch 5
    run_and_kill(EXPORT, 3, 5, [tmp_path / "sub.csr", "local", where, 20], delay=random.uniform(0.0, 0.3))
    client = QdrantClient(path=str(where))
    try:
        partial = client.count("docs").count
        assert 60 <= partial <= 100
        report = cq.export(sub, client, "docs", batch_size=20)
        assert report.uploaded + report.skipped == sub.ntotal and report.skipped == partial
        assert client.count("docs").count == sub.ntotal
        stored = all_points(client, "docs")
        expected = QdrantClient(":memory:")
        cq.export(sub, expected, "docs", batch_size=200)
        assert stored == all_points(expected, "docs")
        xq = qvecs[:10]
        assert_same_results(*cq.search(sub, client, "docs", xq, 10, rerank=0),
                            *sub.search(xq, 10, score="code", rerank=0))
    finally:
        client.close()


class SharedClient:
    """A real local-mode client used the way export() uses a remote one: from several threads.

    Local mode is not thread-safe, so calls are serialised; ``fail`` maps the n-th upsert
    to an exception it raises once, as a network or server would.
    """

    def __init__(self, client, fail=None):
        self._client, self._lock, self._fail = client, threading.Lock(), dict(fail or {})
        self.upserts = 0
        self.init_options = {}  # not local mode: export() takes its threaded path

    def upsert(self, *args, **kwargs):
        with self._lock:
            self.upserts += 1
            exc = self._fail.pop(self.upserts, None)
            if exc is not None:
                raise exc
            return self._client.upsert(*args, **kwargs)

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def locked(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)

        return locked


def test_parallel_upload_retries_transient_errors(sf_index):
    reference = QdrantClient(":memory:")
    cq.export(sf_index, reference, "docs", batch_size=2000)
    shared = SharedClient(QdrantClient(":memory:"), fail={3: ResponseHandlingException(ConnectionError("reset"))})
    report = cq.export(sf_index, shared, "docs", batch_size=300, parallel=3, max_retries=2)
    assert (report.uploaded, report.points_count) == (sf_index.ntotal, sf_index.ntotal)
    assert shared.upserts == -(-sf_index.ntotal // 300) + 1  # one batch was sent twice
    assert all_points(shared, "docs") == all_points(reference, "docs")


def test_permanent_error_stops_and_rerun_resumes(sf_index):
    client = QdrantClient(":memory:")
    bad = UnexpectedResponse(400, "Bad Request", b"{}", Headers({}))
    with pytest.raises(cq.QdrantExportError, match="run the export again to resume"):
        cq.export(sf_index, SharedClient(client, fail={4: bad}), "docs", batch_size=500, parallel=2)
    partial = client.count("docs").count
    assert 0 < partial < sf_index.ntotal
    report = cq.export(sf_index, client, "docs", batch_size=500)
    assert (report.skipped, report.points_count) == (partial, sf_index.ntotal)


# ---------------------------------------------------------------- bad inputs
def codes_of(index, n=50):
    codes = index.codes()
    return SparseCodes(np.array(codes.indices[:n]), np.array(codes.values[:n]), codes.h), np.arange(n)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda c, i: c.values.__setitem__((3, 2), np.nan), "not finite"),
        (lambda c, i: c.values.__setitem__((3, 2), np.inf), "not finite"),
        (lambda c, i: c.indices.__setitem__((4, 1), c.indices[4, 0]), "appears twice"),
        (lambda c, i: c.indices.__setitem__((5, 0), c.h), "outside"),
    ],
)
def test_bad_codes_rejected_before_sending(sf_index, tmp_path, corrupt, message):
    codes, ids = codes_of(sf_index)
    corrupt(codes, ids)
    client = QdrantClient(":memory:")
    with pytest.raises(ValueError, match=message):
        cq.export_codes(codes, ids, client, "bad", normalize=True)
    assert not client.collection_exists("bad")  # nothing was sent, not even the collection
    with cq.EdgeCollection(tmp_path / "shard") as shard:
        with pytest.raises(ValueError, match=message):
            cq.export_codes(codes, ids, shard, normalize=True)
        assert shard.count() == 0
        good, ids = codes_of(sf_index)
        cq.export_codes(good, ids, shard, normalize=True)  # the shard is intact
        assert shard.count() == len(ids)


def test_index_beyond_u32_and_bad_ids_rejected(sf_index):
    codes, ids = codes_of(sf_index, 10)
    big = SparseCodes(codes.indices.astype(np.int64), codes.values, 1 << 40)
    big.indices[2, 0] = 1 << 32
    client = QdrantClient(":memory:")
    with pytest.raises(ValueError, match=r"outside \[0, 2\*\*32"):
        cq.export_codes(big, ids, client, "bad")
    for bad_ids, message in [
        (np.r_[ids[:-1], -3], "non-negative"),
        (np.r_[ids[:-1], 0], "duplicates"),
        (np.r_[ids[:-1], np.uint64(1 << 63)].astype(np.uint64), "below 2\\*\\*63"),
        (ids[:-1], "10 codes but 9 point ids"),
        (["a"] * 10, "integers"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            cq.export_codes(codes, bad_ids, client, "bad")
    with pytest.raises(ValueError, match="dense_vectors has 3 rows"):
        cq.export_codes(codes, ids, client, "bad", dense_vectors=np.ones((3, 4)))
    assert not client.collection_exists("bad")


def test_bad_payloads_rejected(sf_index, scifact, tmp_path):
    client = QdrantClient(":memory:")
    table = scifact.table
    nan = table.append_column("score", pa.array(np.where(np.arange(table.num_rows) == 7, np.nan, 1.0)))
    with pytest.raises(ValueError, match="'score' contains NaN"):
        cq.export(sf_index, client, "p", payload=nan)
    stamps = table.append_column("when", pa.array(np.zeros(table.num_rows, dtype="datetime64[s]")))
    with pytest.raises(ValueError, match="'when' has Arrow type timestamp"):
        cq.export(sf_index, client, "p", payload=stamps)
    with pytest.raises(ValueError, match="points have no payload row"):
        cq.export(sf_index, client, "p", payload=table.slice(0, 100))
    with pytest.raises(ValueError, match="not in the payload source"):
        cq.export(sf_index, client, "p", payload=CORPUS, payload_columns=["title"])
    with pytest.raises(ValueError, match="payload has 2 entries"):
        cq.export(sf_index, client, "p", payload=[{"a": 1}, {"a": 2}])
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.concat_tables([table.slice(0, 2), table.slice(0, 1)]), path)
    with pytest.raises(ValueError, match="twice"):
        cq.export(sf_index, client, "p", payload=path)
    assert not client.collection_exists("p")


def test_incompatible_collections_refused(sf_index, local, qvecs):
    client = QdrantClient(":memory:")
    client.create_collection("other", sparse_vectors_config={"bm25": models.SparseVectorParams()})
    with pytest.raises(ValueError, match="no sparse vector 'csr'"):
        cq.export(sf_index, client, "other")
    client.create_collection("idf", sparse_vectors_config={
        "csr": models.SparseVectorParams(modifier=models.Modifier.IDF)})
    with pytest.raises(ValueError, match="modifier IDF but idf=False"):
        cq.export(sf_index, client, "idf")
    client.create_collection("stale", sparse_vectors_config={"csr": models.SparseVectorParams()},
                             metadata={"csr_index": {**cq.index_metadata(sf_index), "adapter_sha256": "0" * 64}})
    with pytest.raises(ValueError, match="another CSR adapter"):
        cq.export(sf_index, client, "stale")
    with pytest.raises(ValueError, match="another CSR adapter"):
        cq.search(sf_index, client, "stale", qvecs[:2], 5, rerank=0)
    report = cq.export(sf_index, client, "stale", recreate=True, batch_size=2000)
    assert report.points_count == sf_index.ntotal
    with pytest.raises(ValueError, match="no dense vector 'dense'"):
        cq.search(sf_index, client, "stale", qvecs[:2], 5, hybrid=True)
    with pytest.raises(ValueError, match="collection_name"):
        cq.search(sf_index, client, None, qvecs[:2], 5)


def test_target_argument_errors(sf_index, edge, qvecs):
    with pytest.raises(ValueError, match="does not apply to a qdrant-edge shard"):
        cq.search(sf_index, edge, "name", qvecs[:2], 5)
    with pytest.raises(TypeError, match="QdrantClient or an EdgeCollection"):
        cq.search(sf_index, object(), "name", qvecs[:2], 5)
    with pytest.raises(ValueError, match="candidates=5 is below"):
        cq.search(sf_index, edge, None, qvecs[:2], 10, rerank=0, candidates=5)
    with pytest.raises(ValueError, match="score must be"):
        cq.search(sf_index, edge, None, qvecs[:2], 10, score="exact")


def test_edge_layout_checks(sf_index, tmp_path):
    with cq.EdgeCollection(tmp_path / "plain") as shard:
        with pytest.raises(RuntimeError, match="another process"):
            cq.EdgeCollection(tmp_path / "plain")  # the shard is locked while open
    with pytest.raises(ValueError, match="modifier none but idf=True"):
        cq.EdgeCollection(tmp_path / "plain", idf=True)
    with pytest.raises(ValueError, match="no dense vector 'dense'"):
        cq.EdgeCollection(tmp_path / "plain", dense_size=sf_index.d)
    with cq.EdgeCollection(tmp_path / "idf", idf=True) as shard:
        assert shard.has_idf and not shard.has_dense
        with pytest.raises(ValueError, match="modifier IDF but idf=False"):
            cq.export(sf_index, shard)
    with pytest.raises(FileNotFoundError):
        cq.EdgeCollection(tmp_path / "missing", create=False)


def test_empty_codes_are_stored_but_never_found(sf_index, tmp_path, qvecs):
    codes, ids = codes_of(sf_index, 20)
    codes.values[5] = 0
    with cq.EdgeCollection(tmp_path / "shard") as shard:
        cq.export_codes(codes, ids, shard, normalize=True)
        assert shard.count() == 20
        sub = CSRIndex.from_encoder(sf_index.encoder, store_vectors=False)
        _, I = cq.search(sub, shard, None, qvecs, 20, rerank=0, check=False)
        assert 5 not in I


def test_idf_collection_and_parallel_fallback(sf_index, caplog):
    client = QdrantClient(":memory:")
    with caplog.at_level("INFO", logger="csr_index.integrations.qdrant"):
        cq.export(sf_index, client, "idf", idf=True, parallel=4, batch_size=2000)
    assert "parallel=4 ignored" in caplog.text
    sparse = client.get_collection("idf").config.params.sparse_vectors["csr"]
    assert sparse.modifier == models.Modifier.IDF


# ----------------------------------------------------------------------- CLI
def cli_results(hits_per_query, index, topk):
    """(D, I) arrays from the CLI's per-query [(key, score), ...] lists."""
    key_to_id = dict(zip(index.keys_of(index.ids).tolist(), index.ids.tolist()))
    D = np.full((len(hits_per_query), topk), -np.inf, dtype=np.float32)
    I = np.full((len(hits_per_query), topk), -1, dtype=np.int64)
    for q, hits in enumerate(hits_per_query):
        for j, (key, score) in enumerate(hits):
            D[q, j], I[q, j] = score, key_to_id[key]
    return D, I


def test_cli_edge_roundtrip(sf_index, index_dir, qvecs, tmp_path):
    runner = CliRunner()
    shard = tmp_path / "cli-shard"
    result = runner.invoke(export_qdrant, [str(index_dir), "--edge", str(shard), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{sf_index.ntotal} points ({sf_index.ntotal} uploaded" in result.output
    result = runner.invoke(search_qdrant, [str(index_dir), str(QUERIES), "--edge", str(shard), "--topk", "5",
                                           "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["query"] for r in rows] == read_embeddings(QUERIES).keys
    D, I = cli_results([[(h["id"], h["score"]) for h in r["results"]] for r in rows], sf_index, 5)
    # the CLI's defaults are search's: code scores here, exact re-rank of max(100, 10 * topk)
    assert_same_results(D, I, *sf_index.search(qvecs, 5, score="code"))
    # a named sparse vector, searched with the adapter alone
    named = tmp_path / "named-shard"
    sf_index.encoder.save(tmp_path / "model.csr")
    assert runner.invoke(export_qdrant, [str(index_dir), "--edge", str(named), "--vector-name", "foo",
                                         "--quiet"]).exit_code == 0
    alone = runner.invoke(search_qdrant, [str(tmp_path / "model.csr"), str(QUERIES), "--edge", str(named),
                                          "--vector-name", "foo", "--topk", "5", "--rerank", "0", "--quiet"])
    assert alone.exit_code == 0, alone.output
    first = [line.split("\t") for line in alone.output.splitlines()[:5]]
    _, Icode = sf_index.search(qvecs[:1], 5, score="code", rerank=0)
    assert [row[2] for row in first] == list(sf_index.keys_of(Icode[0]))


def test_cli_local_path_and_usage_errors(sf_index, scifact, tmp_path):
    sub = subset_index(sf_index, scifact, 60)
    sub.save(tmp_path / "sub.csr")
    runner = CliRunner()
    where = tmp_path / "local"
    args = [str(tmp_path / "sub.csr"), "--path", str(where), "--collection", "docs", "--quiet"]
    result = runner.invoke(export_qdrant, args + ["--payload", str(CORPUS), "--payload-columns", "id"])
    assert result.exit_code == 0, result.output
    few = tmp_path / "q.parquet"
    pq.write_table(pq.read_table(QUERIES).slice(0, 5), few)
    result = runner.invoke(search_qdrant, [str(tmp_path / "sub.csr"), str(few), "--path", str(where),
                                           "--collection", "docs", "--topk", "3", "--rerank", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    qkeys = read_embeddings(few).keys
    hits = {q: [] for q in qkeys}
    for line in result.output.splitlines():
        q, rank, key, score = line.split("\t")
        assert int(rank) == len(hits[q]) + 1
        hits[q].append((key, float(score)))
    D, I = cli_results([hits[q] for q in qkeys], sub, 3)
    assert_same_results(D, I, *sub.search(read_embeddings(few).vectors, 3, score="code", rerank=0))
    client = QdrantClient(path=str(where))
    try:
        record = client.retrieve("docs", ids=[int(sub.ids[7])], with_payload=True)[0]
        assert record.payload == {"id": scifact.keys[7], "key": scifact.keys[7]}
    finally:
        client.close()
    # the adapter alone finds the keys in the payload: same output as with the index
    sub.encoder.save(tmp_path / "model.csr")
    alone = runner.invoke(search_qdrant, [str(tmp_path / "model.csr"), str(few), "--path", str(where),
                                          "--collection", "docs", "--topk", "3", "--rerank", "0", "--quiet"])
    assert alone.exit_code == 0 and alone.output == result.output, alone.output
    # usage errors: exit code 2 and a message naming the problem
    result = runner.invoke(export_qdrant, [str(tmp_path / "sub.csr"), "--path", str(where), "--quiet"])
    assert result.exit_code == 2 and "--collection" in result.output
    result = runner.invoke(export_qdrant, [str(tmp_path / "sub.csr"), "--url", "http://localhost:1",
                                           "--edge", str(tmp_path / "e"), "--quiet"])
    assert result.exit_code == 2 and "exactly one of" in result.output
    result = runner.invoke(export_qdrant, [str(tmp_path / "sub.csr"), "--edge", str(tmp_path / "e"),
                                           "--collection", "x", "--quiet"])
    assert result.exit_code == 2 and "does not apply to --edge" in result.output
    result = runner.invoke(search_qdrant, [str(tmp_path / "sub.csr"), str(few), "--edge", str(tmp_path / "none"),
                                           "--quiet"])
    assert result.exit_code == 1 and "no qdrant-edge shard" in result.output
    nothing = runner.invoke(export_qdrant, [str(tmp_path / "model.csr"), "--path", str(where), "--collection",
                                            "other", "--quiet"])
    assert nothing.exit_code == 1 and "holds no documents" in nothing.output and "--adapter" in nothing.output
    # failures of the target are clean errors (exit 1, no traceback)
    bad_url = runner.invoke(search_qdrant, [str(tmp_path / "sub.csr"), str(few), "--url", "ftp://x",
                                            "--collection", "docs", "--quiet"])
    held = QdrantClient(path=str(where))  # local mode: one client per directory
    try:
        busy = runner.invoke(search_qdrant, [str(tmp_path / "sub.csr"), str(few), "--path", str(where),
                                             "--collection", "docs", "--quiet"])
    finally:
        held.close()
    smaller = subset_index(sf_index, scifact, 30)  # holds fewer documents than the collection
    smaller.save(tmp_path / "smaller.csr")
    missing = runner.invoke(search_qdrant, [str(tmp_path / "smaller.csr"), str(few), "--path", str(where),
                                            "--collection", "docs", "--topk", "10", "--rerank", "0", "--quiet"])
    for out in (bad_url, busy, missing):
        assert out.exit_code == 1 and out.output.startswith("Error:") and out.exception.__class__ is SystemExit, \
            out.output
    assert "unknown ids" in missing.output


def test_commands_register_on_the_main_group():
    """What cli/main.py does with the two commands (main.add_command) gives working subcommands."""
    import click

    from csr_index.cli.main import main

    group = click.Group(commands=dict(main.commands))
    group.add_command(export_qdrant)
    group.add_command(search_qdrant)
    result = CliRunner().invoke(group, ["search-qdrant", "--help"])
    assert result.exit_code == 0 and "--hybrid" in result.output


def test_int8_originals_export_dequantised(sf_index, scifact, qvecs, tmp_path):
    """An index with int8 originals uploads them dequantised (float32): Qdrant's server re-rank then
    matches CSRIndex's own int8 re-rank of the same candidates."""
    n = 1500
    int8 = CSRIndex.from_encoder(sf_index.encoder, vectors_dtype="int8", engine="inverted")
    int8.add_with_ids(scifact.vectors[:n], np.arange(n, dtype=np.int64) * 3 + 1)
    dense = int8.vectors()
    assert dense.dtype == np.float32 and np.abs(dense - prepared(int8, scifact.vectors[:n])).max() < 0.01
    with cq.EdgeCollection.for_index(tmp_path / "shard", int8, dense=True) as shard:
        assert cq.export(int8, shard, dense=True).uploaded == n
        D, I = cq.search(int8, shard, None, qvecs, 10, rerank=50, rerank_on="server")
        Dl, Il = cq.search(int8, shard, None, qvecs, 10, rerank=50, rerank_on="local")
    assert_same_results(Dl, Il, *int8.search(qvecs, 10, score="code", rerank=50))
    assert (I == Il).mean() > 0.99 and np.abs(D - Dl).max() < 2e-3
