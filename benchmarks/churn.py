"""A changing corpus: build, then rounds of inserts, deletes, upserts and queries, against updatable graphs.

    python benchmarks/churn.py [--size 100k|1m] [--engines csr,usearch,hnswlib,qdrant] [--threads 2]

The workload, run through each engine's public API in one process, one engine after another:
build on 40 % of the corpus (40,000 pypi vectors at 100k), then 12 rounds of: insert the next
5 % (5,000), delete 2.5 % of the live ids at random, upsert 1 % (1,000 live ids get a new vector,
a SYNTHETIC mix of two corpus vectors), and 200 single queries (the held-out pypi queries, in
turn). After each round, recall@10 of those queries against the exact top-10 of the live set.
At 1M (the 100k real vectors + 900k SYNTHETIC mixes, ``make_1m.py``'s set) every count is 10x.

Engines (builds and updates on ``--threads`` threads; queries one at a time on 1 thread):

* csr-index: ``CSRIndex(384)`` — ``train`` on the first batch (its fit counted in the time),
  ``add_with_ids``, ``remove_ids``, ``add_with_ids(upsert=True)``, ``search(q, 10)``;
* usearch ``Index`` (connectivity 32, its default expansion_add) with ``remove``;
* hnswlib (M 32, its default ef_construction) with ``mark_deleted`` and ``add_items(replace_deleted=True)``;
  an upsert re-adds the label, which hnswlib updates in place;
* qdrant-edge (Qdrant's engine in-process): a dense vector with Qdrant's HNSW (m 16,
  ef_construct 100), upserts and deletes through the WAL, ``optimize()`` after the build and
  after each round (so new points are in the graph).

Each graph searches at every ef of EFS; the row reports the smallest ef whose recall@10 is
>= 0.95 in every round, with that ef's query time counted in the workload. Times exclude the
ground truth. Memory per live vector at the end: csr-index ``stats()`` (codes, postings, ids,
norms, float16 originals, deleted rows still held); usearch ``memory_usage``; hnswlib its saved
size (the in-memory layout); qdrant-edge the bytes of its shard directory (vectors, graph, WAL).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DATA, ROOT, pin_threads, synthetic_mixes
from csr_index import CSRIndex
from csr_index.io import read_embeddings

D, TOPK, ROUNDS, QUERIES = 384, 10, 12, 200
EFS = (32, 64, 128, 256)
BAR = 0.95


class Workload:
    """The operations of one run, drawn once (seed 0) so every engine sees the same ones."""

    def __init__(self, xb: np.ndarray, xq: np.ndarray, scale: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n = len(xb)
        order = rng.permutation(n)
        self.base = order[: 4 * n // 10]
        self.inserts = np.array_split(order[4 * n // 10:], ROUNDS)
        self.xb, self.xq = xb, xq
        live = set(self.base.tolist())
        self.deletes, self.upserts, self.upsert_vectors = [], [], []
        for r in range(ROUNDS):
            live.update(self.inserts[r].tolist())
            pool = np.fromiter(live, dtype=np.int64)
            gone = rng.choice(pool, 2500 * scale, replace=False)
            live.difference_update(gone.tolist())
            pool = np.fromiter(live, dtype=np.int64)
            self.deletes.append(gone)
            self.upserts.append(rng.choice(pool, 1000 * scale, replace=False))
            self.upsert_vectors.append(synthetic_mixes(xb, 1000 * scale, seed=1000 + r))

    def queries(self, r: int) -> np.ndarray:
        start = (r * QUERIES) % len(self.xq)
        return self.xq[start : start + QUERIES]


class Truth:
    """Exact top-10 of the live set, kept alongside the engines' updates."""

    def __init__(self, xb: np.ndarray) -> None:
        self.vectors = xb.copy()
        self.live = np.zeros(len(xb), dtype=bool)

    def top(self, q: np.ndarray) -> np.ndarray:
        ids = np.flatnonzero(self.live)
        scores = q @ self.vectors[ids].T
        return ids[np.argsort(-scores, axis=1)[:, :TOPK]]


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(np.asarray(f)[:TOPK].tolist()) & set(t.tolist())) / TOPK for f, t in zip(found, truth)]))


# ---------------------------------------------------------------------------------- engines
class CSR:
    name = "csr-index CSRIndex(384), default search"
    efs = (None,)

    def build(self, ids, x, threads):
        self.index = CSRIndex(D)
        self.index.train(x)
        self.index.add_with_ids(x, ids)

    def insert(self, ids, x):
        self.index.add_with_ids(x, ids)

    def delete(self, ids):
        self.index.remove_ids(ids)

    def upsert(self, ids, x):
        self.index.add_with_ids(x, ids, upsert=True)

    def search(self, q, ef):
        return self.index.search(q[None], TOPK)[1][0]

    def bytes_per_vector(self):
        return self.index.stats()["memory_bytes_per_vector"]


class USearch:
    name = "usearch HNSW (connectivity 32)"
    efs = EFS

    def build(self, ids, x, threads):
        from usearch.index import Index

        self.threads = threads
        self.index = Index(ndim=D, metric="ip", dtype="f32", connectivity=32)
        self.index.add(ids, x, threads=threads)

    def insert(self, ids, x):
        self.index.add(ids, x, threads=self.threads)

    def delete(self, ids):
        self.index.remove(ids)

    def upsert(self, ids, x):
        self.index.remove(ids)
        self.index.add(ids, x, threads=self.threads)

    def search(self, q, ef):
        self.index.expansion_search = ef
        return self.index.search(q, TOPK, threads=1).keys

    def bytes_per_vector(self):
        return self.index.memory_usage / len(self.index)


class HNSWLib:
    name = "hnswlib (M 32)"
    efs = EFS

    def build(self, ids, x, threads):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=D)
        self.index.init_index(max_elements=len(x) * 2, M=32, allow_replace_deleted=True)
        self.index.set_num_threads(threads)
        self.index.add_items(x, ids)
        self.threads, self.live = threads, len(ids)

    def _room(self, extra):
        need = self.index.get_current_count() + extra
        if need > self.index.get_max_elements():
            self.index.resize_index(2 * need)

    def insert(self, ids, x):
        self._room(len(ids))
        self.index.set_num_threads(self.threads)
        self.index.add_items(x, ids, replace_deleted=True)
        self.live += len(ids)

    def delete(self, ids):
        for i in ids:
            self.index.mark_deleted(int(i))
        self.live -= len(ids)

    def upsert(self, ids, x):
        self.index.set_num_threads(self.threads)
        self.index.add_items(x, ids)  # an existing label is updated in place

    def search(self, q, ef):
        self.index.set_ef(ef)
        self.index.set_num_threads(1)
        return self.index.knn_query(q, TOPK)[0][0]

    def bytes_per_vector(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index.bin")
            self.index.save_index(path)
            return os.path.getsize(path) / self.live


class QdrantEdge:
    name = "qdrant-edge dense HNSW (m 16, ef_construct 100)"
    efs = EFS

    def build(self, ids, x, threads):
        import qdrant_edge as qe

        self.qe = qe
        self.dir = Path(tempfile.mkdtemp(prefix="churn-qdrant-"))
        config = qe.EdgeConfig(vectors={"dense": qe.EdgeVectorParams(D, qe.Distance.Dot)}, max_search_threads=1)
        self.shard = qe.EdgeShard.create(str(self.dir), config)
        self.upsert(ids, x)
        self.shard.optimize()

    def insert(self, ids, x):
        self.upsert(ids, x)

    def delete(self, ids):
        self.shard.update(self.qe.UpdateOperation.delete_points([int(i) for i in ids]))

    def upsert(self, ids, x):
        for s in range(0, len(ids), 1000):
            points = [self.qe.Point(int(i), {"dense": v.tolist()}) for i, v in zip(ids[s : s + 1000], x[s : s + 1000])]
            self.shard.update(self.qe.UpdateOperation.upsert_points(points))

    def end_round(self):
        self.shard.optimize()

    def search(self, q, ef):
        request = self.qe.QueryRequest(query=self.qe.Query.Nearest(q.tolist(), using="dense"), limit=TOPK,
                                       params=self.qe.SearchParams(hnsw_ef=ef))
        return [p.id for p in self.shard.query(request)]

    def bytes_per_vector(self):
        self.shard.flush()
        size = sum(f.stat().st_size for f in self.dir.rglob("*") if f.is_file())
        return size / self.shard.count(self.qe.CountRequest(exact=True))

    def close(self):
        self.shard.close()
        shutil.rmtree(self.dir, ignore_errors=True)


ENGINES = {"csr": CSR, "usearch": USearch, "hnswlib": HNSWLib, "qdrant": QdrantEdge}


def run(engine, work: Workload, threads: int) -> dict:
    """The workload on one engine: per-ef recall of every round, times, p50 of single queries."""
    truth = Truth(work.xb)
    pin_threads(threads)
    start = time.perf_counter()
    engine.build(work.base, work.xb[work.base], threads)
    update_s = time.perf_counter() - start
    truth.live[work.base] = True
    rounds, query_s = [], {ef: 0.0 for ef in engine.efs}
    latencies = {ef: [] for ef in engine.efs}
    for r in range(ROUNDS):
        pin_threads(threads)
        start = time.perf_counter()
        engine.insert(work.inserts[r], work.xb[work.inserts[r]])
        engine.delete(work.deletes[r])
        engine.upsert(work.upserts[r], work.upsert_vectors[r])
        if hasattr(engine, "end_round"):
            engine.end_round()
        update_s += time.perf_counter() - start
        truth.live[work.inserts[r]] = True
        truth.live[work.deletes[r]] = False
        truth.vectors[work.upserts[r]] = work.upsert_vectors[r]
        q = work.queries(r)
        exact = truth.top(q)
        pin_threads(1)
        per_ef = {}
        for ef in engine.efs:
            found = []
            for qi in q:
                t = time.perf_counter()
                found.append(engine.search(qi, ef))
                latencies[ef].append(time.perf_counter() - t)
            query_s[ef] += sum(latencies[ef][-len(q):])
            per_ef[str(ef)] = recall(found, exact)
        rounds.append(per_ef)
        print(f"  {engine.name} round {r + 1}: updates {update_s:.1f} s so far, recall {per_ef}", flush=True)
    good = [ef for ef in engine.efs if min(rd[str(ef)] for rd in rounds) >= BAR]
    ef = good[0] if good else engine.efs[-1]
    out = {"engine": engine.name, "ef": ef, "meets_bar": bool(good), "update_s": update_s,
           "query_s": query_s[ef], "total_s": update_s + query_s[ef],
           "p50_ms": 1e3 * float(np.median(latencies[ef])),
           "worst_recall": min(rd[str(ef)] for rd in rounds), "bytes_per_vector": engine.bytes_per_vector(),
           "rounds": rounds}
    if hasattr(engine, "close"):
        engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["100k", "1m"], default="100k")
    parser.add_argument("--engines", default="csr,usearch,hnswlib,qdrant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pin_threads(args.threads)
    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors.astype(np.float32)
    xq = read_embeddings(DATA / "pypi-100k" / "queries.parquet").vectors.astype(np.float32)
    scale = 10 if args.size == "1m" else 1
    if args.size == "1m":
        xb = np.concatenate([xb, synthetic_mixes(xb, 900_000)])
    work = Workload(xb, xq, scale)
    results = []
    for name in args.engines.split(","):
        results.append(run(ENGINES[name](), work, args.threads))
    csr = next((r for r in results if r["engine"].startswith("csr")), None)
    print(f"\n{args.size}: build on {len(work.base):,}, {ROUNDS} rounds of +{len(work.inserts[0]):,} / "
          f"-{len(work.deletes[0]):,} / {len(work.upserts[0]):,} upserts / {QUERIES} queries; {args.threads} threads")
    print("| engine | setting | workload s (fit counted) | updates s | queries s | p50 ms | worst-round recall@10 "
          "| bytes/live vector | x csr-index time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        setting = "default" if r["ef"] is None else f"ef {r['ef']}" + ("" if r["meets_bar"] else " (below 0.95)")
        ratio = f"{r['total_s'] / csr['total_s']:.1f}" if csr else ""
        print(f"| {r['engine']} | {setting} | {r['total_s']:.1f} | {r['update_s']:.1f} | {r['query_s']:.1f} | "
              f"{r['p50_ms']:.2f} | {r['worst_recall']:.4f} | {r['bytes_per_vector']:,.0f} | {ratio} |")
    path = args.json or ROOT / "runs" / f"churn-{args.size}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
