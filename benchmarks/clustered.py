"""Clustered segments (the default ``cluster_rows``) against the unclustered layout and HNSW, at 1M.

    python benchmarks/clustered.py [--cluster-rows 1024] [--fractions 0.2,0.25,0.3,0.4] [--singles 300]

Data: the 1M set of speed.py (pypi-100k plus 900,000 synthetic mixes), exact dense truth. Both
CSR indexes use the adapter speed.py caches (trained on the 100k corpus) and are built as
``csr-index build`` builds: batches of 65,536 added with merges deferred, then one compaction
(which clusters the rows, unless ``cluster_rows=None``). Build seconds are that add + compact
(encoding included), on 2 threads. Then, one query at a time on one thread: the default search of
the unclustered index (``cluster_rows=None``), the clustered index at each ``probe_fraction``
(default 0.3), and faiss HNSW32 (cached as speed.py builds it) at four efSearch, all in this run.
Prints recall@10, p50, memory per vector (``index.stats()``), and for each CSR row the p50 ratio
to the first HNSW row that reaches its recall.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from common import CACHE, THREADS, cached_index, pin_threads
from csr_index import CSRConfig, CSRIndex
from csr_index.clusters import CLUSTER_ROWS
from csr_index.engines.pruned import PROBE_FRACTION
from speed import TOPK, cached_faiss, ground_truth, load_data, measure


def build(base: CSRIndex, xb: np.ndarray, cluster_rows: int | None) -> tuple[CSRIndex, float]:
    """The 1M index over ``base``'s adapter, built as the CLI builds it; returns it and its seconds."""
    index = CSRIndex.from_encoder(base.encoder, cluster_rows=cluster_rows)
    pin_threads(THREADS)
    start = time.perf_counter()
    with index._store.merges_deferred():
        for s in range(0, len(xb), 65_536):
            index.add(xb[s : s + 65_536])
    index.compact()
    return index, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster-rows", type=int, default=CLUSTER_ROWS)
    parser.add_argument("--fractions", default="0.2,0.25,0.3,0.4")
    parser.add_argument("--singles", type=int, default=300)
    args = parser.parse_args()
    xb, xq = load_data("1m", CACHE)
    truth = ground_truth(xb, xq, "1m", CACHE)
    base = cached_index("pypi100k", xb[:100_000], CSRConfig(), CACHE)
    rows = []  # (method, build s, bytes per vector, recall, p50 ms)
    flat, flat_s = build(base, xb, None)
    clustered, clustered_s = build(base, xb, args.cluster_rows)
    seg = clustered._store.snapshot.segments[0]
    print(f"built: unclustered {flat_s:.1f} s, cluster_rows={args.cluster_rows} {clustered_s:.1f} s "
          f"({seg.clusters.count} clusters)", flush=True)
    hnsw, hnsw_s = cached_faiss(CACHE / "hnsw32-1m.faiss",
                                lambda: faiss.IndexHNSWFlat(384, 32, faiss.METRIC_INNER_PRODUCT), xb, train=False)
    del xb
    r = measure(lambda q: flat.search(q, TOPK)[1], xq, truth, args.singles)
    rows.append(("CSR cluster_rows=None (unclustered), default search", flat_s,
                 flat.stats()["memory_bytes_per_vector"], r[0], r[2]))
    for fraction in (float(f) for f in args.fractions.split(",")):
        clustered.set_engine("pruned", probe_fraction=fraction)
        r = measure(lambda q: clustered.search(q, TOPK)[1], xq, truth, args.singles)
        mark = " (default)" if fraction == PROBE_FRACTION and args.cluster_rows == CLUSTER_ROWS else ""
        rows.append((f"CSR cluster_rows={args.cluster_rows}, probe_fraction={fraction}{mark}", clustered_s,
                     clustered.stats()["memory_bytes_per_vector"], r[0], r[2]))
    hnsw_rows = []
    for ef in (128, 160, 192, 256):
        hnsw.hnsw.efSearch = ef
        r = measure(lambda q: hnsw.search(q, TOPK)[1], xq, truth, args.singles)
        hnsw_rows.append((f"faiss HNSW32 efSearch={ef}", hnsw_s, 384 * 4 + 2 * 32 * 4 + 8, r[0], r[2]))
    print(f"\n1M, {args.singles} single queries, 1 thread\n")
    print("| method | build s | bytes/vec | recall@10 | p50 ms | p50 / HNSW32 at >= its recall |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, build_s, nbytes, recall, p50 in rows + hnsw_rows:
        ref = next((h for h in hnsw_rows if h[3] >= recall), None)
        ratio = f"x{p50 / ref[4]:.2f} ({ref[0].split('=')[1]})" if ref and not name.startswith("faiss") else ""
        print(f"| {name} | {build_s:.1f} | {nbytes:.0f} | {recall:.3f} | {p50:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
