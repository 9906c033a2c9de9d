"""Qdrant bridge: serve CSR codes from a Qdrant collection (or an embedded qdrant-edge shard).

Qdrant stores each code as a named sparse vector and scores a query by the dot
product over an exact inverted index, the same computation as
``CSRIndex.search(score="code")``. Every function takes a :class:`CSRIndex` or, where only
the adapter is needed (streaming export, search, metadata), a bare :class:`CSREncoder`.
So that the two agree:

* documents are uploaded as ``index.code_vectors()`` (= ``encoder.weigh(codes)``) and queries
  sent as ``encoder.query_code_vectors(xq)``: codes weighted by the adapter's latent weights and,
  under ``metric="cosine"``, L2-normalised, so their dot product is exactly the
  index's code score;
* point ids are the index's int64 ids, so re-running an export upserts the same
  points (no duplicates) and can skip the ones already present (resume);
* every vector is validated before anything is sent: finite values, unique
  indices sorted ascending, ``0 <= index < min(h, 2**32)``, ids unique in [0, 2**63).

Targets: a ``qdrant_client.QdrantClient`` (server, cluster, or local mode; the code
path is the same) plus a collection name, or an :class:`EdgeCollection`, Qdrant's
engine in-process via qdrant-edge-py (pinned to ``EDGE_VERSION``). Neither is
imported until used; both come with ``pip install 'csr-index[qdrant]'``.

>>> from qdrant_client import QdrantClient
>>> from csr_index.integrations import qdrant as cq
>>> client = QdrantClient(url="http://localhost:6333")
>>> cq.export(index, client, "docs", progress=True)
>>> D, I = cq.search(index, client, "docs", xq, 10)          # = index.search(xq, 10, score="code")
>>> with cq.EdgeCollection("docs.qedge") as edge:             # no server
...     cq.export(index, edge); D, I = cq.search(index, edge, None, xq, 10)

At scale the client needs only the adapter (a :class:`csr_index.CSREncoder`):

>>> enc = CSREncoder.load("model.csr")
>>> cq.export_parquet(enc, "embeddings.parquet", client, "docs", dense=True, progress=True)   # streamed
>>> D, I = cq.search(enc, client, "docs", xq, 10)   # sparse top 300, re-ranked by the dense vectors on the server
>>> searcher = cq.Searcher(enc, client, "docs")      # checked once: for many searches, e.g. one query each
>>> D, I = searcher.search(xq[:1], 10)

Any shortlist (e.g. ids from Qdrant) is re-scored with ``index.rescore(xq, ids, topk, score=...)``.

Modules: ``upload`` (export of an index's codes), ``stream`` (export_parquet), ``sending``
(reports, retries, threads), ``query`` (search: sparse, hybrid, server or local re-rank),
``plan`` (what one search asks), ``layout`` (datatypes, quantization), ``edge``
(EdgeCollection), ``edge_target`` / ``client`` (the two backends), ``targets`` (the interface
both implement), ``validation`` (checks before anything is sent), ``payload``,
``metadata`` (adapter fingerprint), ``_deps`` (lazy imports).
"""

from __future__ import annotations

from ._deps import EDGE_VERSION, INSTALL_HINT
from .edge import EdgeCollection
from .layout import DENSE_DATATYPES, QUANTIZATIONS, SPARSE_DATATYPES
from .metadata import DEFAULT_DENSE_VECTOR_NAME, DEFAULT_VECTOR_NAME, adapter_sha256, index_metadata
from .query import Searcher, fetch_payload, search
from .sending import ExportReport, QdrantExportError
from .stream import export_parquet
from .targets import Target
from .upload import export, export_codes

__all__ = [
    "EDGE_VERSION",
    "INSTALL_HINT",
    "DEFAULT_VECTOR_NAME",
    "DEFAULT_DENSE_VECTOR_NAME",
    "EdgeCollection",
    "ExportReport",
    "QdrantExportError",
    "Target",
    "SPARSE_DATATYPES",
    "DENSE_DATATYPES",
    "QUANTIZATIONS",
    "export",
    "export_codes",
    "export_parquet",
    "search",
    "Searcher",
    "fetch_payload",
    "index_metadata",
    "adapter_sha256",
]
