"""Row clusters of a large segment: the shortlist searches only the clusters nearest the query.

On by default (``CSRIndex(..., cluster_rows=None)`` turns it off): a merged segment of at least
:data:`CLUSTER_MIN_ROWS` rows with stored originals is ordered by cluster. Spherical k-means in
two levels (groups, then clusters of about ``cluster_rows`` rows in each group; see
:func:`cluster_order`) puts every row in a cluster, and the rows are sorted by cluster (stable).
Each cluster is one contiguous range of rows, so a posting list (doc-ordered) holds each
cluster's postings as one run, and the pruned engine reads only the runs and the accumulator
rows of each query's nearest clusters (:func:`nearest_clusters`, ``probe_fraction`` of them)
instead of sweeping all n docs.

What it buys and costs is measured by ``benchmarks/clustered.py`` (1M rows, the README's
"Clustered segments"): each merge past the threshold clusters its rows again. Clusters of the
originals route better than clusters of the codes (tried first: they held fewer of the dense
top-10 for as many rows read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .errors import CorruptIndexError
from .rerank import dequantize_int8

__all__ = ["Clusters", "cluster_order", "nearest_clusters", "CLUSTER_MIN_ROWS", "CLUSTER_ROWS"]

log = logging.getLogger(__name__)

CLUSTER_ROWS = 1024
"""Default rows per cluster (``CSRIndex(cluster_rows=...)``): 976 clusters at 1M rows."""
CLUSTER_MIN_ROWS = 262_144
"""Segments with fewer rows are not clustered: at 100k the whole shortlist costs ~0.6 ms."""
SAMPLE_PER_CLUSTER = 64
"""The second level's k-means sample: this many rows per cluster."""
SAMPLE_PER_GROUP = 256
"""The first level's k-means sample: this many rows per group."""
ITERATIONS = 10
CHUNK = 65_536


@dataclass(frozen=True)
class Clusters:
    """A clustered segment's ranges: cluster c holds rows ``start[c]:start[c + 1]``; its
    ``centroids`` (C, d) float32 are unit vectors in the originals' space."""

    start: np.ndarray
    centroids: np.ndarray

    @property
    def count(self) -> int:
        return len(self.centroids)

    @property
    def nbytes(self) -> int:
        return int(self.start.nbytes + self.centroids.nbytes)

    def labels(self) -> np.ndarray:
        """The cluster of every row, int32 (n,): what a save stores."""
        return np.repeat(np.arange(self.count, dtype=np.int32), np.diff(self.start))

    @classmethod
    def from_labels(cls, labels: np.ndarray, vectors: np.ndarray, scales: np.ndarray | None, where: str
                    ) -> "Clusters":
        """The clusters of a loaded segment from its stored row labels (non-decreasing) and
        originals; the centroids are the normalised means of each cluster's rows."""
        labels = np.asarray(labels)
        if len(labels) != len(vectors) or (len(labels) and (labels.min() < 0 or (np.diff(labels) < 0).any())):
            raise CorruptIndexError(f"{where}: cluster labels must be one non-decreasing non-negative value per row")
        count = int(labels[-1]) + 1 if len(labels) else 0
        start = np.zeros(count + 1, np.int64)
        start[1:] = np.cumsum(np.bincount(labels, minlength=count))
        return cls(start, _means(vectors, scales, labels, count))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _rows(vectors: np.ndarray, scales: np.ndarray | None, rows: slice | np.ndarray) -> np.ndarray:
    """Originals ``rows`` as float32 (int8 ones dequantised with their row scales)."""
    if scales is None:
        return np.asarray(vectors[rows], dtype=np.float32)
    return dequantize_int8(vectors[rows], scales[rows])


def _sums(x: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The sum of the rows of ``x`` with each label (count, d) float32: a sparse one-hot (count, n)
    matrix times ``x`` (``np.add.at`` took 8 s for 1M rows, ``np.add.reduceat`` 2 s)."""
    onehot = sparse.csr_matrix((np.ones(len(labels), np.float32), (labels, np.arange(len(labels)))),
                               shape=(count, len(labels)))
    return np.asarray(onehot @ x, dtype=np.float32)


def _means(vectors: np.ndarray, scales: np.ndarray | None, labels: np.ndarray, count: int) -> np.ndarray:
    """The normalised mean of each label's rows (count, d), the rows read in float32 chunks."""
    sums = np.zeros((count, vectors.shape[1]), np.float32)
    for s in range(0, len(vectors), CHUNK):
        sums += _sums(_rows(vectors, scales, slice(s, s + CHUNK)), labels[s : s + CHUNK], count)
    return _unit(sums)


def _nearest(vectors: np.ndarray, scales: np.ndarray | None, centroids: np.ndarray, top: int,
             rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` nearest centroids (largest inner products, best first) of the originals
    ``rows`` (default: all), and those inner products: int32 and float32 (len(rows), top), scored
    :data:`CHUNK` rows at a time."""
    total = len(vectors) if rows is None else len(rows)
    ids, products = np.empty((total, top), np.int32), np.empty((total, top), np.float32)
    for s in range(0, total, CHUNK):
        scores = _rows(vectors, scales, slice(s, s + CHUNK) if rows is None else rows[s : s + CHUNK]) @ centroids.T
        if top == 1:  # argmax: 1.7 s less than a partition and a sort for the 1M rows' clusters
            pick = np.argmax(scores, axis=1)[:, None]
        else:
            pick = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            pick = np.take_along_axis(pick, np.argsort(-np.take_along_axis(scores, pick, 1), axis=1), 1)
        ids[s : s + CHUNK] = pick
        products[s : s + CHUNK] = np.take_along_axis(scores, pick, 1)
    return ids, products


def _kmeans(xs: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` spherical k-means centroids of the unit rows ``xs`` (:data:`ITERATIONS` rounds)."""
    centroids = xs[rng.choice(len(xs), count, replace=False)].copy()
    for _ in range(ITERATIONS):
        sums = _sums(xs, np.argmax(xs @ centroids.T, axis=1), count)
        used = np.linalg.norm(sums, axis=1) > 0
        centroids[used] = _unit(sums[used])
    return centroids


def _sample(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``min(n, size)`` distinct positions of ``range(n)``, ascending."""
    return np.sort(rng.choice(n, min(n, size), replace=False))


def cluster_order(vectors: np.ndarray, scales: np.ndarray | None, rows_per_cluster: int, seed: int = 0
                  ) -> tuple[np.ndarray, Clusters]:
    """The row order that groups the originals ``vectors`` (n, d; int8 ones with their row
    ``scales``) into clusters of about ``rows_per_cluster`` rows, and the clusters in that order.

    Two levels of spherical k-means, so no row is compared with every centroid: about
    sqrt(C) groups (k-means on :data:`SAMPLE_PER_GROUP` sampled rows each), each group's rows
    split into clusters of about ``rows_per_cluster`` (k-means on :data:`SAMPLE_PER_CLUSTER` of
    them per cluster), then every row goes to the nearest cluster of its two nearest groups. On
    the 1M set this took 10 s where one level of 976 centroids took 19-38 s, and a query's nearest
    25 % of the clusters held as much of its true top-10 (0.992 and 0.991). Clusters left empty
    are dropped; a group's clusters are neighbours in the order. Deterministic for a given
    ``seed``."""
    n = len(vectors)
    count = max(1, n // rows_per_cluster)
    groups = max(1, int(round(np.sqrt(count))))
    rng = np.random.default_rng(seed)
    coarse = _kmeans(_unit(_rows(vectors, scales, _sample(rng, n, groups * SAMPLE_PER_GROUP))), groups, rng)
    near = _nearest(vectors, scales, coarse, min(2, groups))[0]
    labels, best = np.zeros(n, np.int64), np.full(n, -np.inf, np.float32)
    first = 0  # the first cluster number of the group
    for g in range(groups):
        members = np.flatnonzero(near[:, 0] == g)
        if len(members) == 0:  # no row is nearest to it: no clusters
            continue
        leaves = max(1, int(round(len(members) / rows_per_cluster)))
        xs = _unit(_rows(vectors, scales, members[_sample(rng, len(members), leaves * SAMPLE_PER_CLUSTER)]))
        centroids = _kmeans(xs, leaves, rng) if leaves > 1 else _unit(xs.sum(axis=0, keepdims=True))
        rows = np.flatnonzero((near == g).any(axis=1))  # its members and the rows it is second nearest to
        leaf, product = (a[:, 0] for a in _nearest(vectors, scales, centroids, 1, rows))
        better = product > best[rows]
        best[rows[better]], labels[rows[better]] = product[better], first + leaf[better]
        first += leaves
    sizes = np.bincount(labels, minlength=first)
    kept = sizes > 0
    labels = (np.cumsum(kept) - 1)[labels]  # the clusters left empty dropped
    order = np.argsort(labels, kind="stable")
    start = np.zeros(int(kept.sum()) + 1, np.int64)
    start[1:] = np.cumsum(sizes[kept])
    # the centroids a load recomputes from the rows (Clusters.from_labels): the means of the
    # members, so a loaded index routes as the one that was saved (up to float rounding)
    centroids = _means(vectors, scales, labels, len(start) - 1)
    log.info("clustered %d rows into %d clusters in %d groups (largest %d rows)", n, len(start) - 1, groups,
             int(sizes.max()))
    return order, Clusters(start, centroids)


def nearest_clusters(clusters: Clusters, queries: np.ndarray, fraction: float) -> np.ndarray:
    """For each query (nq, d), its ``ceil(fraction x C)`` nearest clusters by centroid (inner
    product), in ascending order: int64 (nq, P)."""
    probes = min(clusters.count, max(1, int(np.ceil(fraction * clusters.count))))
    if probes == clusters.count:
        return np.broadcast_to(np.arange(clusters.count, dtype=np.int64), (len(queries), probes))
    scores = np.asarray(queries, dtype=np.float32) @ clusters.centroids.T
    return np.sort(np.argpartition(-scores, probes - 1, axis=1)[:, :probes], axis=1).astype(np.int64)
