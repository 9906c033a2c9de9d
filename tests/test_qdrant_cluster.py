"""Qdrant at cluster scale, against real engines (qdrant-client local mode, qdrant-edge-py 0.9.0):
streaming export from Parquet with an adapter alone, server-side re-rank by the stored dense
vectors (Query API prefetch), storage datatypes and quantization, resume after SIGKILL, the CLI.

One small adapter is trained on SciFact per module (quality is irrelevant for parity).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from click.testing import CliRunner  # noqa: E402
from qdrant_client import QdrantClient  # noqa: E402

from csr_index import CSRConfig, CSREncoder, CSRIndex  # noqa: E402
from csr_index.cli.qdrant import export_qdrant, search_qdrant  # noqa: E402
from csr_index.errors import NotTrainedError  # noqa: E402
from csr_index.integrations import qdrant as cq  # noqa: E402
from csr_index.scoring import default_rerank  # noqa: E402
from qdrant_fixtures import (CORPUS, QUERIES, TOL, adapter_config, qvecs, requires_scifact,  # noqa: E402, F401
                             run_and_kill, scifact)

R = default_rerank("code", 10)  # 300: what a search re-ranks by default (code x code shortlist)

pytestmark = requires_scifact

# scifact, qvecs: see qdrant_fixtures


@pytest.fixture(scope="module")
def encoder(scifact):
    return CSREncoder(scifact.vectors.shape[1], k=32, config=adapter_config()).fit(scifact.vectors)


@pytest.fixture(scope="module")
def index(encoder, scifact):
    """The same documents in a local CSRIndex: ids = row numbers, as export_parquet assigns them."""
    # exact, as Qdrant's code search; float32 values, as the streaming export sends them (a float16
    # index's own export differs from a stream by float16 rounding, ~1e-4); float16 originals, whose
    # re-rank agrees with the server's float32 one up to ties (int8 ones: 96 % of ids)
    idx = CSRIndex.from_encoder(encoder, store_vectors=True, engine="inverted", values_dtype="float32",
                                vectors_dtype="float16")
    idx.add(scifact.vectors, keys=scifact.keys)
    return idx


@pytest.fixture(scope="module")
def edge(encoder, tmp_path_factory):
    """SciFact streamed into a qdrant-edge shard by the adapter alone, dense vectors included."""
    path = tmp_path_factory.mktemp("edge") / "shard"
    with cq.EdgeCollection.for_index(path, encoder, dense=True) as shard:
        report = cq.export_parquet(encoder, CORPUS, shard, dense=True, read_batch_size=1000, batch_size=400)
        assert report.uploaded == report.points_count == report.total == 5183
        yield shard


def small_parquet(scifact, path, n, ids=None):
    """The first n SciFact docs as Parquet, with integer ``ids`` (or the string keys)."""
    cols = {"id": pa.array(ids, pa.int64()) if ids is not None else pa.array(scifact.keys[:n]),
            "text": scifact.table.column("text").slice(0, n),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(scifact.vectors[:n].reshape(-1)), 384)}
    pq.write_table(pa.table(cols), path)
    return path


def exact_rerank(encoder, x, xq, cand, topk):
    """Reference: float32 dot products of the prepared vectors, best ``topk`` of each candidate row."""
    xs, qs = encoder.prepare(x), encoder.prepare(xq)
    D = np.full((len(qs), topk), -np.inf, np.float32)
    I = np.full((len(qs), topk), -1, np.int64)
    for q in range(len(qs)):
        c = cand[q][cand[q] >= 0]
        s = xs[c] @ qs[q]
        o = np.argsort(-s, kind="stable")[:topk]
        D[q, : len(o)], I[q, : len(o)] = s[o], c[o]
    return D, I


def assert_same(D, I, Dref, Iref, tol=TOL):
    """Same scores position by position; ids may differ only where scores tie."""
    np.testing.assert_allclose(D, Dref, rtol=0, atol=tol)
    swapped = I != Iref
    assert (np.abs(D - Dref)[swapped] <= tol).all()
    assert swapped.mean() < 0.01, f"{swapped.mean():.2%} of ids differ"


# ----------------------------------------------------------- streaming export
def test_stream_export_equals_index_codes(encoder, index, edge, qvecs, scifact):
    D, I = cq.search(encoder, edge, None, qvecs, 10, rerank=0)
    assert_same(D, I, *index.search(qvecs, 10, score="code", rerank=0))
    keys = cq.fetch_payload(edge, None, I[:5])
    assert keys.tolist() == index.keys_of(I[:5]).tolist()  # string ids came back as payload "key"
    record = edge.shard.retrieve([17], True, False)[0]
    assert record.payload == {"key": scifact.keys[17], "text": scifact.table.column("text")[17].as_py()}
    assert edge.metadata() == cq.index_metadata(encoder, "csr", "dense") == cq.index_metadata(index, "csr", "dense")


def test_server_rerank_equals_local_exact_rerank(encoder, index, edge, qvecs, scifact):
    Dc, Ic = cq.search(encoder, edge, None, qvecs, R, rerank=0)  # Qdrant's sparse top R
    D, I = cq.search(encoder, edge, None, qvecs, 10)  # adapter only: auto = server re-rank of the top R
    assert_same(D, I, *exact_rerank(encoder, scifact.vectors, qvecs, Ic, 10))
    # the local path over the same candidates (float16 originals of a full index): same ids, fp16 scores
    Dl, Il = cq.search(index, edge, None, qvecs, 10, rerank=R)
    assert (Il == I).mean() > 0.99 and np.abs(Dl - D).max() < 2e-3
    # explicit server re-rank with a CSRIndex too, and hybrid candidates re-ranked on the server
    assert_same(*cq.search(index, edge, None, qvecs, 10, rerank=R, rerank_on="server"), D, I)
    Dh, Ih = cq.search(encoder, edge, None, qvecs[:50], 10, hybrid=True, rerank=R)
    _, Ihc = cq.search(encoder, edge, None, qvecs[:50], R, hybrid=True, rerank=0)
    assert_same(Dh, Ih, *exact_rerank(encoder, scifact.vectors, qvecs[:50], Ihc, 10))


def test_server_rerank_in_local_mode(encoder, scifact, qvecs, tmp_path):
    path = small_parquet(scifact, tmp_path / "few.parquet", 400, ids=np.arange(400) * 7 + 3)
    client = QdrantClient(":memory:")
    report = cq.export_parquet(encoder, path, client, "docs", dense=True, read_batch_size=150, payload_columns=[])
    assert report.points_count == 400
    xq = qvecs[:8]
    _, Ic = cq.search(encoder, client, "docs", xq, 50, rerank=0)
    assert set(Ic[Ic >= 0].tolist()) <= set((np.arange(400) * 7 + 3).tolist())
    D, I = cq.search(encoder, client, "docs", xq, 5, rerank=50)
    Dref, Iref = exact_rerank(encoder, scifact.vectors[:400], xq, (Ic - 3) // 7, 5)
    assert_same(D, I, Dref, np.where(Iref >= 0, Iref * 7 + 3, -1))
    assert client.retrieve("docs", ids=[3], with_payload=True)[0].payload == {}


def test_id_columns_are_read_as_the_index_reads_them(encoder, scifact, tmp_path):
    """Integral float ids (pandas writes integer ids with gaps so) are ids; a null id is refused."""
    path = small_parquet(scifact, tmp_path / "f.parquet", 50)
    table = pq.read_table(path)
    floats = table.set_column(0, "id", pa.array(np.arange(50) * 2.0))
    pq.write_table(floats, path)
    client = QdrantClient(":memory:")
    assert cq.export_parquet(encoder, path, client, "docs", payload_columns=[]).points_count == 50
    assert client.retrieve("docs", ids=[98])[0].id == 98
    pq.write_table(table.set_column(0, "id", pa.array([None] + list(range(1, 50)), pa.int64())), path)
    with pytest.raises(ValueError, match="1 null ids"):
        cq.export_parquet(encoder, path, QdrantClient(":memory:"), "docs")


def test_int_ids_payload_and_resume(encoder, scifact, tmp_path):
    ids = np.random.default_rng(0).permutation(600).astype(np.int64) * 5
    path = small_parquet(scifact, tmp_path / "ids.parquet", 600, ids=ids)
    with cq.EdgeCollection(tmp_path / "shard") as shard:
        first = cq.export_parquet(encoder, path, shard, read_batch_size=128)
        assert (first.uploaded, first.points_count) == (600, 600)
        record = shard.shard.retrieve([int(ids[9])], True, False)[0]
        assert record.payload == {"text": scifact.table.column("text")[9].as_py()}  # int ids are not payload
        again = cq.export_parquet(encoder, path, shard, read_batch_size=100, batch_size=64)
        assert (again.uploaded, again.skipped, again.points_count) == (0, 600, 600)


def test_directory_of_files_numbers_rows_across_files(encoder, scifact, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    table = pq.read_table(small_parquet(scifact, tmp_path / "all.parquet", 300))
    pq.write_table(table.slice(0, 120), folder / "part-0.parquet")
    pq.write_table(table.slice(120), folder / "part-1.parquet")
    with cq.EdgeCollection(tmp_path / "shard") as shard:
        report = cq.export_parquet(encoder, folder, shard, payload_columns=[], read_batch_size=50)
        assert (report.total, report.points_count) == (300, 300)
        assert cq.fetch_payload(shard, None, [[0, 119, 120, 299, -1]]).tolist() == [
            [scifact.keys[0], scifact.keys[119], scifact.keys[120], scifact.keys[299], None]]
        assert shard.shard.retrieve([7], True, False)[0].payload == {"key": scifact.keys[7]}


# ------------------------------------------------------------------- layout
def test_storage_options_recorded_and_checked(encoder, scifact, tmp_path):
    path = small_parquet(scifact, tmp_path / "s.parquet", 50)
    client = QdrantClient(":memory:")
    cq.export_parquet(encoder, path, client, "q", dense=True, sparse_datatype="uint8", dense_datatype="float16",
                      quantization="int8")
    params = client.get_collection("q").config.params
    assert params.sparse_vectors["csr"].index.datatype.value == "uint8"
    assert params.vectors["dense"].datatype.value == "float16" and params.vectors["dense"].quantization_config.scalar
    with pytest.raises(ValueError, match="sparse_datatype='uint8' but 'float16' was asked"):
        cq.export_parquet(encoder, path, client, "q", dense=True, sparse_datatype="float16")
    with pytest.raises(ValueError, match="quantization='int8' but 'binary'"):
        cq.export_parquet(encoder, path, client, "q", dense=True, quantization="binary")
    with cq.EdgeCollection(tmp_path / "e", dense_size=384, sparse_datatype="float16", quantization="binary") as e:
        assert e.storage() == {"sparse_datatype": "float16", "dense_datatype": "float32", "quantization": "binary",
                               "dense_on_disk": False}
        with pytest.raises(ValueError, match="sparse_datatype='float16' but 'uint8'"):
            cq.export_parquet(encoder, path, e, dense=True, sparse_datatype="uint8")
    with pytest.raises(ValueError, match="quantization='binary' but 'int8'"):
        cq.EdgeCollection(tmp_path / "e", quantization="int8")
    with pytest.raises(ValueError, match="sparse_datatype must be one of"):
        cq.EdgeCollection(tmp_path / "x", sparse_datatype="int4")
    with pytest.raises(ValueError, match="pass dense=True"):
        cq.export_parquet(encoder, path, client, "z", quantization="int8")


def test_quantized_dense_rerank_is_exact_when_rescored(encoder, scifact, qvecs, tmp_path):
    """int8 vectors re-rank approximately; rescore with oversampling R/topk scores every candidate exactly."""
    path = small_parquet(scifact, tmp_path / "q.parquet", 2000)
    with cq.EdgeCollection.for_index(tmp_path / "sq", encoder, dense=True, quantization="int8",
                                     indexing_threshold=1) as shard:
        cq.export_parquet(encoder, path, shard, dense=True)
        shard.optimize()  # quantization is built when the optimizer indexes the segment
        _, Ic = cq.search(encoder, shard, None, qvecs, 50, rerank=0)
        ref = exact_rerank(encoder, scifact.vectors[:2000], qvecs, Ic, 5)
        D, I = cq.search(encoder, shard, None, qvecs, 5, rerank=50)
        assert np.abs(D - ref[0]).max() > 1e-3  # int8 scores
        assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(I, ref[1])]) > 0.8
        assert_same(*cq.search(encoder, shard, None, qvecs, 5, rerank=50, quantization_rescore=True, oversampling=10),
                    *ref)


# ---------------------------------------------------------------- bad input
def test_bad_parquet_rejected_before_sending(encoder, scifact, tmp_path):
    client = QdrantClient(":memory:")
    x = scifact.vectors[:300].copy()
    x[123, 5] = np.nan
    bad = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 384)}), bad)
    with pytest.raises(ValueError, match="row 123: the vector in 'embedding' has a NaN"):
        cq.export_parquet(encoder, bad, client, "bad")
    assert not client.collection_exists("bad")  # nothing was sent, not even the collection
    with cq.EdgeCollection(tmp_path / "shard") as shard:
        with pytest.raises(ValueError, match="row 123"):
            cq.export_parquet(encoder, bad, shard, read_batch_size=100)
        assert shard.count() == 100  # the batch before the bad row is kept; a re-run resumes
    narrow = tmp_path / "narrow.parquet"
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[:, :8].reshape(-1)), 8)}),
                   narrow)
    with pytest.raises(ValueError, match="8-d vectors, the adapter expects d=384"):
        cq.export_parquet(encoder, narrow, client, "bad")
    dup = small_parquet(scifact, tmp_path / "dup.parquet", 10, ids=[1, 2, 3, 4, 5, 6, 7, 8, 9, 1])
    with pytest.raises(ValueError, match="duplicates"):
        cq.export_parquet(encoder, dup, client, "bad")
    neg = small_parquet(scifact, tmp_path / "neg.parquet", 3, ids=[0, -4, 2])
    with pytest.raises(ValueError, match="non-negative"):
        cq.export_parquet(encoder, neg, client, "bad")
    with pytest.raises(ValueError, match="no column 'vec'"):
        cq.export_parquet(encoder, neg, client, "bad", column="vec")
    with pytest.raises(ValueError, match="not in"):
        cq.export_parquet(encoder, neg, client, "bad", payload_columns=["title"])
    with pytest.raises(FileNotFoundError):
        cq.export_parquet(encoder, tmp_path / "missing.parquet", client, "bad")
    assert not client.collection_exists("bad")


def test_adapter_only_errors(encoder, edge, qvecs, index):
    with pytest.raises(ValueError, match='score="asymmetric" re-scores candidates with their stored codes'):
        cq.search(encoder, edge, None, qvecs[:2], 5, score="asymmetric")
    with pytest.raises(ValueError, match="local re-ranking needs the original vectors"):
        cq.search(encoder, edge, None, qvecs[:2], 5, rerank_on="local")
    with pytest.raises(TypeError, match="export_parquet"):
        cq.export(encoder, edge)
    with pytest.raises(TypeError, match="CSRIndex or a CSREncoder"):
        cq.search(object(), edge, None, qvecs[:2], 5)
    with pytest.raises(NotTrainedError):
        cq.search(CSREncoder(384), edge, None, qvecs[:2], 5)
    client = QdrantClient(":memory:")
    cq.export(CSRIndex.from_encoder(encoder, store_vectors=False), client, "nodense")
    with pytest.raises(ValueError, match="needs the original vectors .* or dense vectors"):
        cq.search(encoder, client, "nodense", qvecs[:2], 5, rerank=10)
    with pytest.raises(ValueError, match="server-side re-ranking need an export with dense=True"):
        cq.search(encoder, client, "nodense", qvecs[:2], 5, rerank=10, rerank_on="server")
    other = CSREncoder(384, k=32, config=CSRConfig(steps=2, batch_size=64, warmup_steps=1, device="cpu", seed=1))
    other.fit(qvecs)
    with pytest.raises(ValueError, match="another CSR adapter"):
        cq.search(other, edge, None, qvecs[:2], 5)


# ------------------------------------------------------------------- resume
# the child run by qdrant_fixtures.run_and_kill: stream Parquet into an edge shard or local-mode path
EXPORT = r"""
from csr_index import CSREncoder
from csr_index.integrations import qdrant as cq

adapter, parquet, kind, where, read_batch, batch = args
encoder = CSREncoder.load(adapter)
if kind == "edge":
    target, name = cq.EdgeCollection(where, dense_size=encoder.d), None
else:
    from qdrant_client import QdrantClient
    target, name = QdrantClient(path=where), "docs"
cq.export_parquet(encoder, parquet, target, name, dense=True, read_batch_size=int(read_batch), batch_size=int(batch))
print("FINISHED", flush=True)
"""


def test_killed_stream_export_resumes(encoder, scifact, qvecs, tmp_path):
    adapter = tmp_path / "adapter.csr"
    encoder.save(adapter)
    path = small_parquet(scifact, tmp_path / "c.parquet", 1500)
    where = tmp_path / "shard"
    # killed while holding after 7 requests of 100
    run_and_kill(EXPORT, 7, 7, [adapter, path, "edge", where, 500, 100])
    with cq.EdgeCollection(where) as shard:
        assert shard.count() == 700  # its WAL kept every acknowledged request
        report = cq.export_parquet(encoder, path, shard, dense=True, read_batch_size=400)
        assert (report.uploaded, report.skipped, report.points_count) == (800, 700, 1500)
        D, I = cq.search(encoder, shard, None, qvecs, 10)
        _, Ic = cq.search(encoder, shard, None, qvecs, R, rerank=0)
    assert_same(D, I, *exact_rerank(encoder, scifact.vectors[:1500], qvecs, Ic, 10))


def test_killed_local_stream_export_resumes(encoder, scifact, tmp_path):
    adapter = tmp_path / "adapter.csr"
    encoder.save(adapter)
    path = small_parquet(scifact, tmp_path / "c.parquet", 100)
    where = tmp_path / "local"
    # local mode commits point by point: keep it small
    run_and_kill(EXPORT, 2, 2, [adapter, path, "local", where, 40, 20])
    client = QdrantClient(path=str(where))
    try:
        assert client.count("docs").count == 40
        report = cq.export_parquet(encoder, path, client, "docs", dense=True)
        assert (report.uploaded, report.skipped, client.count("docs").count) == (60, 40, 100)
    finally:
        client.close()


# ---------------------------------------------------------------------- CLI
def test_cli_stream_export_and_adapter_only_search(encoder, scifact, qvecs, tmp_path):
    adapter = tmp_path / "model.csr"
    encoder.save(adapter)
    path = small_parquet(scifact, tmp_path / "c.parquet", 1000)
    shard = tmp_path / "shard"
    runner = CliRunner()
    result = runner.invoke(export_qdrant, [str(path), "--adapter", str(adapter), "--edge", str(shard), "--dense",
                                           "--read-batch-size", "300", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "1000 points (1000 uploaded" in result.output
    few = tmp_path / "q.parquet"
    pq.write_table(pq.read_table(QUERIES).slice(0, 20), few)
    result = runner.invoke(search_qdrant, [str(adapter), str(few), "--edge", str(shard), "--topk", "5", "--json",
                                           "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    key_row = {k: i for i, k in enumerate(scifact.keys[:1000])}
    with cq.EdgeCollection(shard, create=False) as e:
        _, Ic = cq.search(encoder, e, None, qvecs[:20], R, rerank=0)
    Dref, Iref = exact_rerank(encoder, scifact.vectors[:1000], qvecs[:20], Ic, 5)
    D = np.array([[h["score"] for h in r["results"]] for r in rows], np.float32)
    I = np.array([[key_row[h["id"]] for h in r["results"]] for r in rows])  # keys printed from the payload
    assert_same(D, I, Dref, Iref)
    result = runner.invoke(export_qdrant, [str(path), "--edge", str(tmp_path / "e2"), "--quiet"])
    assert result.exit_code == 2 and "--adapter" in result.output


# ----------------------------------------------------------- remote requests
class Recorder:
    """A local-mode client that records what a remote one would be sent."""

    def __init__(self, client):
        self._client, self.calls = client, []

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)

        return record


@pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning")
def test_requests_encode_for_rest_and_grpc(encoder, scifact, qvecs, tmp_path):
    """What local mode is given is what a remote client sends: the same models, and they encode as
    REST JSON and as gRPC messages (no server runs here; this is as far as the check goes)."""
    from qdrant_client import models
    from qdrant_client.conversions.conversion import RestToGrpc

    path = small_parquet(scifact, tmp_path / "r.parquet", 60)
    client = Recorder(QdrantClient(":memory:"))
    cq.export_parquet(encoder, path, client, "docs", dense=True, sparse_datatype="float16", quantization="int8")
    cq.search(encoder, client, "docs", qvecs[:3], 5, rerank=20, quantization_rescore=True, oversampling=2.0)
    cq.search(encoder, client, "docs", qvecs[:3], 5, rerank=20, hybrid=True)
    create = next(kw for name, _, kw in client.calls if name == "create_collection")
    RestToGrpc.convert_vector_params(create["vectors_config"]["dense"])
    RestToGrpc.convert_sparse_vector_params(create["sparse_vectors_config"]["csr"])
    requests = [r for name, _, kw in client.calls if name == "query_batch_points" for r in kw["requests"]]
    assert len(requests) == 6 and all(r.prefetch is not None and r.using == "dense" for r in requests)
    assert requests[0].params.quantization.oversampling == 2.0 and requests[0].prefetch.limit == 20
    for req in requests:
        assert models.QueryRequest.model_validate_json(req.model_dump_json()) == req
        RestToGrpc.convert_query_request(req, "docs")
    upserts = [kw["points"] for name, _, kw in client.calls if name == "upsert"]
    for point in upserts[0][:3]:
        assert models.PointStruct.model_validate_json(point.model_dump_json()) == point
        RestToGrpc.convert_point_struct(point)
