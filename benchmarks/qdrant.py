"""Upload rate and query latency: qdrant-edge (Qdrant's engine in-process) vs CSRIndex's own engine.

Both serve the same codes of the same index, in the same process and run:

    python benchmarks/qdrant.py                      # pypi-100k, 100k docs, 1000 queries
    python benchmarks/qdrant.py --limit 10000 --nq 300 --steps 100   # a quick check
    python benchmarks/qdrant.py --index pypi.csr     # reuse a saved index (no training)

Measured (wall clock, one process; see --threads):
* ingest: CSRIndex.add (encode + store) vs encode + export to a qdrant-edge shard on
  disk (validation, upsert through its WAL, flush); the first CSRIndex search, which
  builds its inverted index, and qdrant-edge's optimize() are timed separately;
* queries: one query per call (p50/p95/p99 latency, query encoding included) and all
  queries in one call (throughput), raw code scoring and with exact re-ranking of 100;
* parity: share of queries whose top-10 ids equal CSRIndex's (score="code").
Quality is not measured here (the index may be barely trained): see ``csr-index eval``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import DATA as SHARED_DATA
from csr_index import CSRConfig, CSRIndex
from csr_index.integrations import qdrant as cq
from csr_index.io import read_embeddings

DATA = SHARED_DATA / "pypi-100k"


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1e3
    return " / ".join(f"{np.percentile(ms, p):.2f}" for p in (50, 95, 99))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def per_query(fn, xq: np.ndarray, repeat_warmup: int = 5) -> list[float]:
    for i in range(min(repeat_warmup, len(xq))):
        fn(xq[i : i + 1])
    times = []
    for i in range(len(xq)):
        t = time.perf_counter()
        fn(xq[i : i + 1])
        times.append(time.perf_counter() - t)
    return times


def same_top(I: np.ndarray, Iref: np.ndarray) -> float:
    return float(np.mean([set(a[a >= 0]) == set(b[b >= 0]) for a, b in zip(I, Iref)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DATA / "corpus.parquet")
    ap.add_argument("--queries", type=Path, default=DATA / "queries.parquet")
    ap.add_argument("--limit", type=int, default=None, help="Use the first N corpus rows (default: all).")
    ap.add_argument("--nq", type=int, default=1000, help="Number of queries.")
    ap.add_argument("--index", type=Path, default=None, help="Load this saved index instead of training one.")
    ap.add_argument("--steps", type=int, default=300, help="Training steps when training (quality is not measured).")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1024, help="Points per qdrant-edge upsert.")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    ap.add_argument("--workdir", type=Path, default=None, help="Where the shard goes (default: a temp dir).")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = read_embeddings(args.corpus)
    xb = corpus.vectors[: args.limit] if args.limit else corpus.vectors
    keys = corpus.keys[: len(xb)] if corpus.keys is not None else None
    xq = read_embeddings(args.queries).vectors[: args.nq]
    print(f"corpus {args.corpus.parent.name}: {len(xb):,} docs x {xb.shape[1]}, {len(xq)} queries, "
          f"torch threads {torch.get_num_threads()}", file=sys.stderr)

    if args.index is not None:
        trained = CSRIndex.load(args.index)
        index = CSRIndex(trained.d, k=trained.k, h=trained.h, metric=trained.metric, store_vectors=True)
        index.adapter = trained.adapter
        train_s = 0.0
    else:
        index = CSRIndex(xb.shape[1], k=args.k, store_vectors=True,
                         config=CSRConfig(steps=args.steps, batch_size=1024, device="cpu"))
        _, train_s = timed(lambda: index.train(xb))

    rows: list[tuple[str, str, str]] = []

    # ---- ingest
    _, encode_s = timed(lambda: index.encode(xb))
    _, add_s = timed(lambda: index.add(xb, keys=keys))
    _, build_s = timed(lambda: index.search(xq[:1], args.topk, score="code", rerank=0))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="csr-qdrant-bench-"))
    shard_dir = workdir / "shard"
    shutil.rmtree(shard_dir, ignore_errors=True)
    edge = cq.EdgeCollection(shard_dir)
    report, export_s = timed(lambda: cq.export(index, edge, batch_size=args.batch_size))
    assert report.points_count == index.ntotal
    n = index.ntotal
    rows.append(("ingest: encode only (shared)", f"{n / encode_s:,.0f} docs/s", f"{n / encode_s:,.0f} docs/s"))
    rows.append(("ingest: CSRIndex.add / encode+export", f"{n / add_s:,.0f} docs/s",
                 f"{n / (encode_s + export_s):,.0f} docs/s"))
    rows.append(("upload of ready codes (export only)", "-", f"{n / export_s:,.0f} pts/s"))
    rows.append(("index build (1st search / optimize)", f"{build_s:.2f} s", "see below"))

    def csr_search(q, rerank=0):
        return index.search(q, args.topk, score="code", rerank=rerank)

    def edge_search(q, rerank=0):
        return cq.search(index, edge, None, q, args.topk, rerank=rerank)

    def query_rows(label: str) -> None:
        lat_c = per_query(csr_search, xq)
        lat_e = per_query(edge_search, xq)
        rows.append((f"1 query/call p50/p95/p99 ms {label}", percentiles(lat_c), percentiles(lat_e)))
        (_, Ic), tc = timed(lambda: csr_search(xq))
        (_, Ie), te = timed(lambda: edge_search(xq))
        rows.append((f"{len(xq)} queries/call, QPS {label}", f"{len(xq) / tc:,.0f}", f"{len(xq) / te:,.0f}"))
        rows.append((f"top-{args.topk} ids = CSRIndex's {label}", "100%", f"{same_top(Ie, Ic):.1%}"))

    lat_enc = per_query(lambda q: index.encode(q), xq)
    rows.append(("query encoding alone p50/p95/p99 ms", percentiles(lat_enc), percentiles(lat_enc)))
    query_rows("(unoptimized shard)")
    changed, opt_s = timed(edge.optimize)
    rows.append(("qdrant-edge optimize()", "-", f"{opt_s:.2f} s ({'merged' if changed else 'no-op'})"))
    query_rows("(optimized)")
    lat_c = per_query(lambda q: csr_search(q, 100), xq)
    lat_e = per_query(lambda q: edge_search(q, 100), xq)
    rows.append(("+ exact rerank 100, p50/p95/p99 ms", percentiles(lat_c), percentiles(lat_e)))
    (_, Ic), _ = timed(lambda: csr_search(xq, 100))
    (_, Ie), _ = timed(lambda: edge_search(xq, 100))
    rows.append((f"top-{args.topk} ids = CSRIndex's (rerank 100)", "100%", f"{same_top(Ie, Ic):.1%}"))
    edge.close()
    used = sum(f.stat().st_blocks * 512 for f in shard_dir.rglob("*") if f.is_file())  # sparse files: real use
    rows.append(("shard directory on disk (segments + WAL)", "-", f"{used / n:,.0f} B/doc"))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{n:,} docs, {len(xq)} queries, k={index.k}, h={index.h}, topk={args.topk}"
          f" (training {train_s:.0f}s, not compared)")
    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':{w}s} | {'CSRIndex engine':>22s} | {'qdrant-edge ' + cq.EDGE_VERSION:>22s} |")
    print(f"|{'-' * (w + 2)}|{'-' * 24}|{'-' * 24}|")
    for name, a, b in rows:
        print(f"| {name:{w}s} | {a:>22s} | {b:>22s} |")


if __name__ == "__main__":
    main()
