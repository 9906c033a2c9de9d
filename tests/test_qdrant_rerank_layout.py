"""The CSR layout in Qdrant, next to Qdrant's own dense index (issue #22).

The dense vector that only re-ranks the sparse shortlist gets no HNSW graph (its own
``hnsw_config`` with ``m = 0``), in a qdrant-edge shard and in a qdrant-client collection alike
(the request a server receives is the same one local mode gets); search still returns the exact
dense top-k of the shortlist; the prefetch sends the ``query_k`` strongest latents of each query.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from click.testing import CliRunner  # noqa: E402
from qdrant_client import QdrantClient, models  # noqa: E402

from csr_index import CSRConfig, CSRIndex  # noqa: E402
from csr_index.cli.qdrant import export_qdrant  # noqa: E402
from csr_index.integrations import qdrant as cq  # noqa: E402
from csr_index.integrations.qdrant.layout import Storage  # noqa: E402

D, N, NQ = 32, 1500, 40
TOPK, R = 10, 100
RECALL_FLOOR = 0.95
"""recall@10 of the server re-rank (R = 100 of 1,500) against the exact dense top-10, measured on these
vectors: 1.00 with all 8 latents, 0.98 with query_k = 3 (code x code alone: 0.39 and 0.30)."""


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in 20 clusters: 1,500 documents and 40 queries."""
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((20, D))
    x = centers[rng.integers(0, 20, N + NQ)] + 0.6 * rng.standard_normal((N + NQ, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:N].astype(np.float32), x[N:].astype(np.float32)


@pytest.fixture(scope="module")
def index(data) -> CSRIndex:
    xb, _ = data
    config = CSRConfig(steps=40, batch_size=128, warmup_steps=5, seed=0, device="cpu")
    idx = CSRIndex(D, k=8, h=128, config=config, store_vectors=True)
    idx.train(xb)
    idx.add(xb)
    return idx


@pytest.fixture(scope="module")
def edge(index, tmp_path_factory):
    """The default layout in a qdrant-edge shard, indexed (threshold 1 KB) so the layout is in force."""
    path = tmp_path_factory.mktemp("edge") / "shard"
    with cq.EdgeCollection.for_index(path, index, dense=True, indexing_threshold=1) as shard:
        cq.export(index, shard, dense=True)
        shard.optimize()
        yield shard


def dense_rows(codes, n_cols: int) -> np.ndarray:
    out = np.zeros((codes.n, n_cols), dtype=np.float64)
    np.add.at(out, (np.arange(codes.n)[:, None], codes.indices.astype(np.int64)), codes.values)
    return out


def shortlist_rerank(index: CSRIndex, xq: np.ndarray, query_k: int | None, rerank: int = R, topk: int = TOPK):
    """What server re-ranking must return, computed here: the code x code top ``rerank`` of each
    query (its ``query_k``-latent code), re-scored by the dot product with the stored originals."""
    enc = index.encoder
    scores = dense_rows(enc.query_code_vectors(xq, query_k), enc.h) @ dense_rows(index.code_vectors(), enc.h).T
    shortlist = np.argsort(-scores, axis=1, kind="stable")[:, :rerank]
    exact = np.einsum("qd,qrd->qr", enc.prepare(xq, "queries").astype(np.float64),
                      index.vectors().astype(np.float64)[shortlist])
    order = np.argsort(-exact, axis=1, kind="stable")[:, :topk]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(shortlist, order, 1)


def recall(I: np.ndarray, index: CSRIndex, xq: np.ndarray) -> float:
    exact = index.encoder.prepare(xq, "queries") @ index.vectors().astype(np.float32).T
    truth = np.argsort(-exact, axis=1)[:, :TOPK]
    return float(np.mean([len(set(a) & set(b)) / TOPK for a, b in zip(I, truth)]))


def indexed_dense_configs(path) -> list[dict]:
    """The dense vector's index config of every segment Qdrant has indexed (from its segment.json)."""
    found = []
    for seg in sorted((path / "segments").glob("*/segment.json")):
        config = json.loads(seg.read_text())["config"]["vector_data"][cq.DEFAULT_DENSE_VECTOR_NAME]["index"]
        if config["type"] != "plain":
            found.append(config)
    return found


# ------------------------------------------------------------------------------------ qdrant-edge
def test_edge_dense_vector_gets_no_graph(edge):
    assert edge.dense_graph() is False
    assert edge.layout()["vectors"][cq.DEFAULT_DENSE_VECTOR_NAME]["hnsw_config"]["m"] == 0
    indexed = indexed_dense_configs(edge.path)
    assert indexed, "the optimizer indexed no segment: the layout was never applied"
    assert all(c["type"] == "hnsw" and c["options"]["m"] == 0 for c in indexed), indexed


@pytest.mark.parametrize("query_k", [None, 3])
def test_edge_rerank_is_the_exact_top_of_the_shortlist(edge, index, data, query_k):
    _, xq = data
    D, I = cq.search(index.encoder, edge, None, xq, TOPK, rerank=R, query_k=query_k)
    Dref, Iref = shortlist_rerank(index, xq, query_k)
    np.testing.assert_allclose(D, Dref, atol=1e-4)
    assert np.mean(np.all(I == Iref, axis=1)) >= 0.95  # ids may swap only where scores tie
    assert recall(I, index, xq) >= RECALL_FLOOR


def test_query_k_changes_what_the_prefetch_finds(index, data):
    """The reference above tells 3 latents from all 8 apart, so the test above can fail."""
    _, xq = data
    D3, _ = shortlist_rerank(index, xq, 3)
    D8, _ = shortlist_rerank(index, xq, None)
    assert np.abs(D3 - D8).max() > 1e-3


def test_edge_graph_on_request_and_layout_checked(index, tmp_path):
    path = tmp_path / "graph"
    with cq.EdgeCollection.for_index(path, index, dense=True, dense_hnsw=True, indexing_threshold=1) as shard:
        cq.export(index, shard, dense=True)
        shard.optimize()
        assert shard.dense_graph() is True
        assert all(c["options"]["m"] == 16 for c in indexed_dense_configs(path))
    with pytest.raises(ValueError, match="dense_hnsw=True but False was asked"):
        cq.EdgeCollection.for_index(path, index, dense=True, dense_hnsw=False)
    with cq.EdgeCollection.for_index(path, index, dense=True) as shard:  # None: whatever the shard has
        assert shard.dense_graph() is True


def test_dense_options_need_dense_vectors(tmp_path):
    with pytest.raises(ValueError, match="dense_hnsw must be a bool"):
        Storage(dense_hnsw="no")
    with pytest.raises(ValueError, match="need dense vectors"):
        cq.EdgeCollection(tmp_path / "s", dense_hnsw=False)


def test_hybrid_search_on_a_graphless_dense_vector_warns(edge, index, data, caplog):
    _, xq = data
    with caplog.at_level(logging.WARNING, logger="csr_index.integrations.qdrant.query"):
        cq.search(index.encoder, edge, None, xq[:2], TOPK, hybrid=True, rerank=R)
    assert "no HNSW graph" in caplog.text


# ------------------------------------------------------------- qdrant-client (local mode = server API)
class Recording:
    """A QdrantClient whose create_collection and query_batch_points arguments are kept: what a
    server would receive over the wire, since local mode and a remote client share those models."""

    def __init__(self, client: QdrantClient) -> None:
        self.client, self.created, self.requests = client, [], []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_collection(self, name, **kwargs):
        self.created.append(kwargs)
        return self.client.create_collection(name, **kwargs)

    def query_batch_points(self, name, requests, **kwargs):
        self.requests.extend(requests)
        return self.client.query_batch_points(name, requests=requests, **kwargs)


@pytest.fixture
def client():
    c = QdrantClient(":memory:")
    yield Recording(c)
    c.close()


@pytest.mark.parametrize("query_k", [None, 3])
def test_client_layout_and_prefetch(client, index, data, query_k):
    _, xq = data
    cq.export(index, client, "docs", dense=True)
    sent = client.created[0]["vectors_config"][cq.DEFAULT_DENSE_VECTOR_NAME]
    assert isinstance(sent.hnsw_config, models.HnswConfigDiff) and sent.hnsw_config.m == 0
    assert client.get_collection("docs").config.params.vectors[cq.DEFAULT_DENSE_VECTOR_NAME].hnsw_config.m == 0

    D, I = cq.search(index.encoder, client, "docs", xq, TOPK, rerank=R, query_k=query_k)
    latents = query_k or index.k
    sizes = [len(r.prefetch.query.indices) for r in client.requests]
    assert len(sizes) == len(xq) and max(sizes) == latents and min(sizes) >= 1
    assert all(r.prefetch.limit == R and r.limit == TOPK and r.using == cq.DEFAULT_DENSE_VECTOR_NAME
               and r.prefetch.using == cq.DEFAULT_VECTOR_NAME for r in client.requests)
    Dref, _ = shortlist_rerank(index, xq, query_k)
    np.testing.assert_allclose(D, Dref, atol=1e-4)
    assert recall(I, index, xq) >= RECALL_FLOOR


def test_client_graph_on_request(client, index):
    cq.export(index, client, "g", dense=True, dense_hnsw=True)
    assert client.created[0]["vectors_config"][cq.DEFAULT_DENSE_VECTOR_NAME].hnsw_config is None
    with pytest.raises(ValueError, match="dense_hnsw=True but False was asked"):
        cq.export(index, client, "g", dense=True, dense_hnsw=False)


@pytest.mark.parametrize("flag, graph", [([], False), (["--dense-hnsw"], True)])
def test_cli_export_sets_the_graph(index, tmp_path, flag, graph):
    index.save(tmp_path / "index")
    result = CliRunner().invoke(export_qdrant, [str(tmp_path / "index"), "--edge", str(tmp_path / "e"), "--dense",
                                                "--quiet", *flag])
    assert result.exit_code == 0, result.output
    with cq.EdgeCollection(tmp_path / "e", create=False) as shard:
        assert shard.dense_graph() is graph
