"""The default search against faiss HNSW32 at equal recall, single queries in alternating rounds.

    python benchmarks/versus_hnsw.py [--sizes 1m] [--rounds 7] [--queries 100]

speed.py measures its rows one after another, so on a shared VM a drift of a few minutes moves one
row against the next. Here the default ``index.search`` and HNSW32 (cached as speed.py builds it)
answer the same queries in turn, round after round, on one thread (:func:`speed.alternating_p50`).
The CSR index is speed.py's (its cached adapter; at 1M the 900k synthetic mixes added and
compacted, so clustered). HNSW32 runs at the first efSearch of speed.py's grid whose recall@10
reaches the default search's, and at the one below it. Prints recall@10, p50 per search (median
of the rounds) and the ratio of the p50s (median of the per-round ratios, with their range).
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np

from common import CACHE, pin_threads
from speed import D, TOPK, alternating_p50, cached_faiss, csr_index_for, ground_truth, load_data, recall_at

EF_GRID = (64, 96, 128, 160, 192, 256)


def compare(size: str, rounds: int, queries: int) -> None:
    class Args:
        cache = CACHE

    xb, xq = load_data(size, CACHE)
    truth = ground_truth(xb, xq, size, CACHE)
    index = csr_index_for(size, xb, Args)
    hnsw, _ = cached_faiss(CACHE / f"hnsw32-{size}.faiss",
                           lambda: faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT), xb, train=False)
    del xb
    pin_threads(1)
    recall = recall_at(index.search(xq, TOPK)[1], truth)
    hnsw_recall = {}
    for ef in EF_GRID:
        hnsw.hnsw.efSearch = ef
        hnsw_recall[ef] = recall_at(hnsw.search(xq, TOPK)[1], truth)
    reach = next((ef for ef in EF_GRID if hnsw_recall[ef] >= recall), EF_GRID[-1])
    efs = [ef for ef in EF_GRID if ef <= reach][-2:]

    def at(ef: int):
        def search(q: np.ndarray):
            hnsw.hnsw.efSearch = ef
            return hnsw.search(q, TOPK)
        return search

    searches = {"csr": lambda q: index.search(q, TOPK), **{f"ef{ef}": at(ef) for ef in efs}}
    p50 = alternating_p50(searches, xq, rounds, queries)
    print(f"{size}: {rounds} rounds of {queries} single queries, 1 thread")
    print(f"  CSR default search: recall@10 {recall:.3f}, p50 {np.median(p50['csr']):.3f} ms, "
          f"{index.stats()['memory_bytes_per_vector']:.0f} B/vector")
    for ef in efs:
        ratio = p50["csr"] / p50[f"ef{ef}"]
        print(f"  faiss HNSW32 efSearch={ef}: recall@10 {hnsw_recall[ef]:.3f}, p50 {np.median(p50[f'ef{ef}']):.3f} ms;"
              f" CSR / HNSW x{np.median(ratio):.2f} (rounds {ratio.min():.2f}-{ratio.max():.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1m")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    for size in args.sizes.split(","):
        compare(size, args.rounds, args.queries)


if __name__ == "__main__":
    main()
