"""Where the default search's shortlist spends its time, stage by stage, at 100k and 1M.

    python benchmarks/shortlist_stages.py [--sizes 100k,1m] [--queries 300]

The same data, index and adapter as speed.py (the 1M set is pypi-100k plus 900k synthetic
mixes). For each query, one after another on one thread, the pruned engine's stages are timed
apart: adding the posting lists of the query's ``query_cut`` strongest terms into the
accumulator (in a clustered segment, their runs in the query's nearest clusters only), selecting
the candidates from it (a rare sampling miss adds the lists again, as the engine does), and
scoring the candidates exactly from the forward index; then, in a second pass over the same
queries, the whole engine call. Prints p50 per stage, the postings
read and the candidates scored. The engine is the one a default ``index.search`` builds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import CACHE, pin_threads
from csr_index.clusters import nearest_clusters
from csr_index.engines.base import kernel_vector, sparse_query_arrays
from csr_index.engines.shortlist import _add_lists, _score_rows, _shortlist
from csr_index.scoring import SCORES, default_rerank
from speed import TOPK, csr_index_for, load_data


def stages(size: str, queries: int) -> None:
    class Args:
        cache = CACHE

    xb, xq = load_data(size, CACHE)
    index = csr_index_for(size, xb, Args)
    del xb
    pin_threads(1)
    index.search(xq[:2], TOPK)  # builds the default engine
    seg = index._store.snapshot.segments[0]
    engine = seg.engine(index._engine_spec)
    score = SCORES["asymmetric"]
    scale = kernel_vector(score.scale(index.encoder, seg), engine.n, "scale")  # empty: none (metric 'ip')
    rerank = default_rerank("asymmetric", TOPK, index.ntotal)
    budget = engine.shortlist_size(rerank)
    p, f = engine.lists, engine.forward
    acc = np.zeros(engine.n, np.float32)
    rows = np.empty(engine.n + 1, np.int32)
    scores = np.empty(engine.n + 1, np.float32)
    skip = np.zeros(0, np.uint8)
    hv, hi = np.empty(rerank, np.float32), np.empty(rerank, np.int64)
    prepared = [index.prepare(xq[q : q + 1], "queries") for q in range(queries + 1)]
    batches = [score.queries(index.encoder, x, index.k) for x in prepared]
    # the clusters each query's shortlist reads: its nearest ones (an unclustered engine: its one cluster)
    probes = [engine._every if engine.clusters is None else nearest_clusters(seg.clusters, x, engine.probe_fraction)
              for x in prepared]
    starts, runs = engine._starts, p.runs
    times: dict[str, list[float]] = {"lists": [], "selection": [], "exact scores": [], "whole engine call": []}
    postings, probed = [], []
    for q, batch in enumerate(batches):  # the stages, query after query
        qptr, qlat, qval = sparse_query_arrays(batch.terms)
        off = np.float32(batch.offset[0]) if batch.offset is not None else np.float32(0)
        t0 = time.perf_counter()
        _add_lists(0, qptr, qlat, qval, engine.query_cut, p.indptr, p.docs, p.vals, p.scale, probes[q][0], runs, starts,
                   acc)
        t1 = time.perf_counter()
        m = _shortlist(0, qptr, qlat, qval, engine.query_cut, p.indptr, p.docs, p.vals, p.scale, probes[q][0], runs,
                       acc, off, scale, skip, budget, starts, rows, scores)  # a sampling miss re-adds the lists
        t2 = time.perf_counter()
        _score_rows(rows, m, batch.dense[0], off, f.idx, f.vals, f.lut, scale, hv, hi)
        t3 = time.perf_counter()
        if q:  # the first query compiles and warms up
            for name, a, b in zip(times, (t0, t1, t2), (t1, t2, t3)):
                times[name].append(b - a)
            mine = probes[q][0]
            postings.append(int(sum((runs[t, mine + 1] - runs[t, mine]).sum() for t in qlat[: engine.query_cut])))
            probed.append(int((starts[mine + 1] - starts[mine]).sum()))
    for q, batch in enumerate(batches):  # then the engine's own call, in a second pass (caches as cold)
        t0 = time.perf_counter()
        engine.search(batch, rerank, scale, probes=None if engine.clusters is None else probes[q])
        if q:
            times["whole engine call"].append(time.perf_counter() - t0)
    print(f"{size}: n {engine.n:,}, query_cut {engine.query_cut}, candidates {budget:,}, re-rank {rerank}, "
          f"postings read per query {np.mean(postings):,.0f}, docs probed {np.mean(probed):,.0f}"
          f" ({'not clustered' if seg.clusters is None else f'{seg.clusters.count} clusters, probe_fraction {engine.probe_fraction}'})")
    for name, ts in times.items():
        print(f"  {name}: p50 {1e3 * np.median(ts):.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100k,1m")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    for size in args.sizes.split(","):
        stages(size, args.queries)


if __name__ == "__main__":
    main()
