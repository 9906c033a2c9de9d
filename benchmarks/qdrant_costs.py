"""Where a CSR search inside Qdrant spends its time: Qdrant's sparse search and its re-rank.

    python benchmarks/qdrant_costs.py [--sizes 100000,25000] [--query-k 32,16,8,4] [--rerank 0,300]

For each collection size, one qdrant-edge shard in the default CSR layout (the sparse codes and the
dense originals without a graph, as ``benchmarks/qdrant.py versus-dense`` builds it) is filled with
the first n vectors of pypi-100k and optimized; then single queries (one thread, end to end through
``cq.Searcher``, query encoding included) are timed for every (query_k, rerank) pair, the pairs
taking turns in blocks of 25 queries so that a slow spell of the shared machine hits all alike.
``rerank 0`` is Qdrant's sparse search alone (code x code top-10); ``rerank R`` adds Qdrant's
re-rank of the sparse top-R against the dense vectors. In the same blocks, a shard of Qdrant's dense
HNSW (f32, m 16, ef_construct 100) answers at ``hnsw_ef`` 64, where ``versus-dense`` found it first
reaches recall 0.95. The adapter is the one ``versus-dense`` trains and caches (``CSRConfig()`` on
pypi-100k, in runs/bench-cache).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DATA, THREADS, cached_index, pin_threads
from csr_index import CSRConfig
from csr_index.io import read_embeddings
from qdrant import CSRShard, DenseShard

BLOCK = 25
DENSE_EF = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,25000")
    ap.add_argument("--query-k", default="32,16,8,4")
    ap.add_argument("--rerank", default="0,300")
    ap.add_argument("--singles", type=int, default=300)
    args = ap.parse_args()
    corpus = DATA / "pypi-100k"
    xb_raw = read_embeddings(corpus / "corpus.parquet").vectors
    xq_raw = read_embeddings(corpus / "queries.parquet").vectors[: args.singles]
    encoder = cached_index("pypi100k", xb_raw, CSRConfig()).encoder
    xb, xq = encoder.prepare(xb_raw), encoder.prepare(xq_raw, "queries")
    pairs = [(int(k), int(r)) for k in args.query_k.split(",") for r in args.rerank.split(",")]
    print(f"pypi-100k, adapter k={encoder.k}, h={encoder.h}; {len(xq)} single queries on one thread, p50 ms")
    print(f"| docs | dense HNSW, hnsw_ef {DENSE_EF} | "
          + " | ".join(f"CSR query_k {k}, rerank {r}" for k, r in pairs) + " |")
    print("|---:|" + "---:|" * (len(pairs) + 1))
    for n in (int(v) for v in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix="csr-qdrant-costs-"))
        try:
            pin_threads(THREADS)
            shard, dense = CSRShard(work / "csr", encoder), DenseShard(work / "dense", encoder.d, quantized=False)
            for target in (shard, dense):
                target.upsert(np.arange(n, dtype=np.int64), xb[:n], 512)
                target.optimize()
            pin_threads(1)
            runs = [lambda q: dense.search(q, 10, ef=DENSE_EF)] + [
                (lambda q, k=k, r=r: shard.search(q, 10, rerank=r, query_k=k)) for k, r in pairs]
            for run in runs:  # warm-up: each searcher is made (and checked) once
                run(xq[:5])
            times: list[list[float]] = [[] for _ in runs]
            for s in range(0, len(xq), BLOCK):
                for j in np.random.default_rng(s).permutation(len(runs)):
                    for i in range(s, min(len(xq), s + BLOCK)):
                        start = time.perf_counter()
                        runs[j](xq[i : i + 1])
                        times[j].append(time.perf_counter() - start)
            shard.close()
            dense.close()
            print(f"| {n:,} | " + " | ".join(f"{1e3 * np.median(t):.2f}" for t in times) + " |", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
