"""Search speed of csr-index against exact dense search, HNSW, IVF-PQ, kANNolo's HNSW and Seismic, in one run.

    python benchmarks/speed.py [--sizes 100k,1m] [--singles 300] [--plot docs/speed.png]

Data: pypi-100k (100,000 corpus and 1,000 query vectors, all-MiniLM-L6-v2, 384-d) and "1m":
those 100,000 real vectors plus 900,000 SYNTHETIC ones (common.synthetic_mixes: re-normalised
convex mixes of two random corpus vectors). Ground truth: the exact dense top-10 per query.

The CSR index is ``CSRIndex(384)`` with every library default (k = 32, h = 1536, originals
stored, float16 code values), its adapter trained on the 100k corpus on 2 threads and cached
(common.cached_index); the 1M index encodes the 1M vectors with the same adapter. Every method is measured in this run:
recall@10 against the exact top-10, batch throughput (the 1,000 queries at once, 2 threads),
single-query latency p50 / p99 (one query at a time, 1 thread), build seconds, memory per
stored vector (everything the index holds: codes, ids, norms, posting lists, originals).
CSR rows add: the busiest latent's share of documents and the postings a query reads / N.
kANNolo and Seismic rows need the extra ``anchors`` (left out without it); Seismic runs on the
CSR index's own codes (seismic_anchor.py).
Exact dense is the faster of numpy BLAS and faiss IndexFlatIP; ratios are against it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from common import (CACHE, DATA, ROOT, THREADS, cached_index, load_scifact, pin_threads, save_figure,
                    scifact_index, subplots, synthetic_mixes)
from csr_index import CSRConfig, CSRIndex
from csr_index.engines.pruned import PrunedEngine
from csr_index.evaluation import evaluate_run
from csr_index.io import read_embeddings
from csr_index.budgets import CANDIDATE_GROWTH, RERANK_GROWTH
from csr_index.scoring import default_rerank
from seismic_anchor import seismic_rows

TOPK = 10
D = 384


@dataclass
class Row:
    size: str
    method: str
    family: str
    build_s: float
    bytes_per_vector: float
    recall: float
    qps: float
    p50_ms: float
    p99_ms: float
    busiest: float | None = None
    postings_per_n: float | None = None


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[:TOPK]) & set(b)) / TOPK for a, b in zip(found, truth)]))


def measure(search: Callable[[np.ndarray], np.ndarray], xq: np.ndarray, truth: np.ndarray, singles: int
            ) -> tuple[float, float, float, float]:
    """(recall@10, batch QPS on THREADS threads, p50 ms, p99 ms one query at a time on 1 thread)."""
    pin_threads(THREADS)
    search(xq[:4])
    start = time.perf_counter()
    found = search(xq)
    qps = len(xq) / (time.perf_counter() - start)
    pin_threads(1)
    search(xq[:1])
    times = []
    for i in range(min(singles, len(xq))):
        start = time.perf_counter()
        search(xq[i : i + 1])
        times.append(time.perf_counter() - start)
    pin_threads(THREADS)
    return recall_at(found, truth), qps, 1e3 * float(np.percentile(times, 50)), 1e3 * float(np.percentile(times, 99))


# ------------------------------------------------------------------ data


def load_data(size: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors
    xq = read_embeddings(DATA / "pypi-100k" / "queries.parquet").vectors
    if size == "100k":
        return xb, xq
    path = cache / "pypi1m-synthetic-f16.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, synthetic_mixes(xb, 900_000).astype(np.float16))
    return np.concatenate([xb, np.load(path).astype(np.float32)]), xq


def ground_truth(xb: np.ndarray, xq: np.ndarray, size: str, cache: Path) -> np.ndarray:
    path = cache / f"gt-{size}.npy"
    if not path.exists():
        flat = faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb)
        np.save(path, flat.search(xq, TOPK)[1])
    return np.load(path)


# ------------------------------------------------------------------ baselines


def cached_faiss(path: Path, make: Callable[[], faiss.Index], xb: np.ndarray, train: bool) -> tuple[faiss.Index, float]:
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return faiss.read_index(str(path)), json.loads(meta.read_text())["build_s"]
    pin_threads(THREADS)
    index = make()
    start = time.perf_counter()
    if train:
        index.train(xb[np.random.default_rng(0).permutation(len(xb))[:100_000]])
    index.add(xb)
    build = time.perf_counter() - start
    faiss.write_index(index, str(path))
    meta.write_text(json.dumps({"build_s": build}))
    return index, build


def dense_rows(size: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, args) -> list[Row]:
    rows = []

    def numpy_search(q: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(q), 256):
            scores = q[s : s + 256] @ xb.T
            top = np.argpartition(-scores, TOPK - 1, axis=1)[:, :TOPK]
            out.append(np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1))
        return np.concatenate(out)

    rows.append(Row(size, "exact dense (numpy BLAS)", "exact dense", 0.0, 4 * D,
                    *measure(numpy_search, xq, truth, args.singles_slow)))
    flat = faiss.IndexFlatIP(D)
    flat.add(xb)
    rows.append(Row(size, "exact dense (faiss IndexFlatIP)", "exact dense", 0.0, 4 * D,
                    *measure(lambda q: flat.search(q, TOPK)[1], xq, truth, args.singles)))
    hnsw, build = cached_faiss(args.cache / f"hnsw32-{size}.faiss",
                               lambda: faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT), xb, train=False)
    # a fine grid from 64 up, so "HNSW32 at >= this recall" is the efSearch that first reaches it
    for ef in (16, 32, 64, 96, 128, 160, 192, 256):
        hnsw.hnsw.efSearch = ef
        rows.append(Row(size, f"faiss HNSW32 efSearch={ef}", "HNSW32", build, 4 * D + 2 * 32 * 4 + 8,
                        *measure(lambda q: hnsw.search(q, TOPK)[1], xq, truth, args.singles)))
    nlist = 1024 if len(xb) <= 200_000 else 4096
    ivf, build = cached_faiss(args.cache / f"ivfpq-{size}.faiss",
                              lambda: faiss.index_factory(D, f"IVF{nlist},PQ48", faiss.METRIC_INNER_PRODUCT), xb,
                              train=True)
    for nprobe in (8, 32, 128):
        ivf.nprobe = nprobe
        rows.append(Row(size, f"faiss IVF{nlist},PQ48 nprobe={nprobe}", "IVF-PQ", build, 48 + 8,
                        *measure(lambda q: ivf.search(q, TOPK)[1], xq, truth, args.singles)))
    return rows


def kannolo_rows(size: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, args) -> list[Row]:
    """kANNolo's dense HNSW (m 32, ef_construction 40, as benchmarks/build.py builds it), cached in
    ``args.cache``; left out when kannolo is not installed (extra ``anchors``). Its batch column
    is queries one after another (its own batch search is not used)."""
    try:
        import kannolo
    except ImportError:
        print("kannolo is not installed: its rows are left out (pip install -e '.[anchors]')")
        return []
    path, meta = args.cache / f"kannolo-hnsw32-{size}.bin", args.cache / f"kannolo-hnsw32-{size}.json"
    if path.exists() and meta.exists():
        index, build = kannolo.DensePlainHNSW.load(str(path)), json.loads(meta.read_text())["build_s"]
    else:
        pin_threads(THREADS)
        start = time.perf_counter()
        index = kannolo.DensePlainHNSW.build_from_array(np.ascontiguousarray(xb, dtype=np.float32).ravel(), D, 32, 40,
                                                        metric="ip")
        build = time.perf_counter() - start
        index.save(str(path))
        meta.write_text(json.dumps({"build_s": build}))
    rows = []
    for ef in (64, 128, 256):
        def search(q: np.ndarray, ef: int = ef) -> np.ndarray:
            return np.array([np.asarray(index.search(np.ascontiguousarray(v), TOPK, ef_search=ef)[1]) for v in q])

        rows.append(Row(size, f"kANNolo dense HNSW m 32, ef={ef}", "kANNolo HNSW", build,
                        index.space_usage_bytes() / len(xb), *measure(search, xq, truth, args.singles)))
    return rows


# ------------------------------------------------------------------ CSR


def csr_index_for(size: str, xb: np.ndarray, args) -> CSRIndex:
    """``CSRIndex(384)`` with the library defaults trained on the 100k corpus (the adapter is
    cached); for 1M, the same adapter encoding all 1M vectors."""
    base = cached_index("pypi100k", xb[:100_000], CSRConfig(), args.cache)
    if size == "100k":
        return base
    index = CSRIndex.from_encoder(base.encoder)
    pin_threads(THREADS)
    for s in range(0, len(xb), 65_536):
        index.add(xb[s : s + 65_536])
    index.compact()
    return index


# the pruned engine's default shortlist, as its signature gives it (the table's first row)
PRUNED = {p.name: p.default for p in inspect.signature(PrunedEngine.__init__).parameters.values()
          if p.name in ("query_cut", "candidates", "list_cut")}
DEFAULT_RERANK = default_rerank("asymmetric", TOPK)

# (label, engine, engine options, search keyword arguments); the first row is the library default
CSR_SETTINGS: list[tuple[str, str, dict, dict]] = [
    (f"default search (pruned: query_cut={PRUNED['query_cut']}, {PRUNED['candidates']} candidates "
     f"x (n/100k)^{CANDIDATE_GROWTH}, list_cut={PRUNED['list_cut']}; rerank {DEFAULT_RERANK} x (n/100k)^{RERANK_GROWTH})",
     "auto", {}, {}),
    *[(f"pruned query_cut={qc} cand={c} list_cut={lc} + rerank {r}", "pruned",
       {"query_cut": qc, "candidates": c, "list_cut": lc}, {"rerank": r})
      for qc, c, lc, r in [(8, 800, 3.0, 100), (12, 800, 3.0, 100), (16, 500, 3.0, 100), (16, 1000, 1.5, 100),
                           (16, 1500, 3.0, 150), (16, 800, None, 100), (32, 800, 3.0, 100), (32, 2000, None, 200)]],
    (f"pruned query_cut={PRUNED['query_cut']} cand={PRUNED['candidates']} list_cut={PRUNED['list_cut']}, no rerank",
     "pruned", {}, {"rerank": 0}),
    ("exact asymmetric (forward scan) + rerank 100", "inverted", {}, {"rerank": 100}),
    ("exact code query_k=32 (inverted) + rerank 100", "inverted", {}, {"score": "code", "rerank": 100}),
    ("torch CSR (CPU tensors), code + rerank 100", "torch", {"device": "cpu"}, {"score": "code", "rerank": 100}),
]


def postings_read(index: CSRIndex, xq: np.ndarray, query_cut: int | None, list_cut: int | None) -> float:
    """Mean postings a query's shortlist reads, over N: the lengths (capped at ``list_cut`` entries)
    of the lists of its ``query_cut`` largest terms, as the pruned engine orders them."""
    from csr_index.scoring import SCORES

    lengths = np.bincount(index.codes().indices[index.codes().values > 0].astype(np.int64), minlength=index.h)
    if list_cut is not None:
        lengths = np.minimum(lengths, list_cut)
    terms = SCORES["asymmetric"].queries(index.encoder, index.prepare(xq), index.k).terms
    total = 0
    for lat, val in zip(terms.indices, terms.values):
        order = np.argsort(-np.abs(val), kind="stable")[: query_cut or index.k]
        total += lengths[lat[order][val[order] != 0]].sum()
    return float(total / len(xq) / index.ntotal)


def alternating_p50(searches: dict[str, Callable[[np.ndarray], object]], xq: np.ndarray, rounds: int = 7,
                    n: int = 100) -> dict[str, np.ndarray]:
    """Single-query p50 (ms) of each search per round, on 1 thread: every round runs the same ``n``
    queries through each search in turn, so that the drifts of a shared machine hit all of them."""
    pin_threads(1)
    for search in searches.values():
        search(xq[:1])
    out: dict[str, list[float]] = {name: [] for name in searches}
    for r in range(rounds):
        qs = xq[(r * n) % len(xq) :][:n]
        for name, search in searches.items():
            times = []
            for i in range(len(qs)):
                start = time.perf_counter()
                search(qs[i : i + 1])
                times.append(time.perf_counter() - start)
            out[name].append(1e3 * float(np.median(times)))
    pin_threads(THREADS)
    return {name: np.array(p50s) for name, p50s in out.items()}


def paired_speedup(xb: np.ndarray, xq: np.ndarray, index: CSRIndex, rounds: int = 7, n: int = 100) -> dict:
    """Single-query p50 of exact dense (faiss IndexFlatIP) and of the default ``index.search`` in
    alternating rounds (:func:`alternating_p50`); the speed-up is the median of the per-round
    ratios (with their range)."""
    flat = faiss.IndexFlatIP(D)
    flat.add(xb)
    p50 = alternating_p50({"dense": lambda q: flat.search(q, TOPK), "csr": lambda q: index.search(q, TOPK)},
                          xq, rounds, n)
    dense, csr = p50["dense"], p50["csr"]
    ratio = dense / csr
    return {"dense_p50_ms": round(float(np.median(dense)), 3), "csr_p50_ms": round(float(np.median(csr)), 3),
            "speedup_median": round(float(np.median(ratio)), 2), "speedup_min": round(float(ratio.min()), 2),
            "speedup_max": round(float(ratio.max()), 2), "rounds": rounds, "queries_per_round": n}


def csr_rows(size: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, args) -> tuple[list[Row], dict]:
    rows = []
    index = csr_index_for(size, xb, args)
    paired = paired_speedup(xb, xq, index)
    logging.getLogger("speed").info("paired %s", paired)
    stats = index.stats()
    stats_nv = stats["memory_bytes_per_vector"] - stats.get("memory_vectors_bytes_per_vector", 0)
    train_s = index.train_stats.get("seconds", float("nan"))
    for label, engine, options, kwargs in CSR_SETTINGS:
        scans = engine in ("torch",) or (engine == "inverted" and kwargs.get("score", "asymmetric") != "code")
        if size != "100k" and engine == "torch":
            continue  # minutes per setting at 1M on CPU; the torch engine is for GPUs
        index.set_engine(engine, **options)
        index.search(xq[:2], TOPK, **kwargs)  # builds the engine (posting lists)
        if engine in ("auto", "pruned"):
            built = index._store.snapshot.segments[0].engine(index._engine_spec)
            reads = postings_read(index, xq, built.query_cut, built.list_limit)
        else:
            reads = float("nan") if scans else postings_read(index, xq, None, None)
        nbytes = stats["memory_bytes_per_vector"] if kwargs.get("rerank", 1) else stats_nv
        rows.append(Row(size, "CSR " + label, "CSR " + engine, train_s, nbytes,
                        *measure(lambda q, kw=kwargs: index.search(q, TOPK, **kw)[1], xq, truth,
                                 args.singles_slow if scans else args.singles),
                        busiest=stats["busiest_latent_doc_fraction"], postings_per_n=reads))
        logging.getLogger("speed").info("%s", rows[-1])
    index.set_engine("auto")
    rows += seismic_rows(index, xq, lambda *a: Row(size, *a), lambda search: measure(search, xq, truth, args.singles))
    return rows, paired


def scifact_quality() -> dict:
    """NDCG@10 on SciFact of the default index's scores (trained on its corpus, library defaults)."""
    xb, doc_keys, xq, query_keys, qrels = load_scifact()
    index = scifact_index(32)

    def ndcg(D_: np.ndarray, I: np.ndarray) -> float:
        keys = np.where(I >= 0, doc_keys[np.maximum(I, 0)], None)
        return round(evaluate_run(qrels, query_keys, D_, keys)["nDCG@10"], 4)

    flat = faiss.IndexFlatIP(D)
    flat.add(xb)
    # NDCG@10 is scored, so re-rank as deep as a default top-10 search does (100, as benchmarks/quality.py
    # does), not as the default of search(xq, 100) would: max(100, 10 * 100) = 1,000
    rerank = default_rerank("asymmetric", TOPK)
    return {"dense": ndcg(*flat.search(xq, 100)),
            f"default search (rerank {rerank})": ndcg(*index.search(xq, 100, rerank=rerank)),
            "asymmetric": ndcg(*index.search(xq, 100, rerank=0)),
            "code": ndcg(*index.search(xq, 100, score="code", rerank=0)),
            "busiest_latent_doc_fraction": index.stats()["busiest_latent_doc_fraction"]}


# ------------------------------------------------------------------ output


def table(rows: list[Row]) -> str:
    lines = ["| data | method | build s | bytes/vec | recall@10 | QPS (2 thr) | p50 ms | p99 ms | busiest | postings/N |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = f"{r.busiest:.3f} | {r.postings_per_n:.2f}" if r.busiest is not None else " | "
        lines.append(f"| {r.size} | {r.method} | {r.build_s:.1f} | {r.bytes_per_vector:.0f} | {r.recall:.3f} "
                     f"| {r.qps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {extra} |")
    return "\n".join(lines)


def ratios(rows: list[Row]) -> str:
    """Speed-ups over exact dense, and CSR against HNSW32 at equal recall."""
    out = []
    for size in dict.fromkeys(r.size for r in rows):
        rs = [r for r in rows if r.size == size]
        dense = [r for r in rs if r.family == "exact dense"]
        best_p50, best_qps = min(r.p50_ms for r in dense), max(r.qps for r in dense)
        hnsw = sorted((r for r in rs if r.family == "HNSW32"), key=lambda r: r.recall)
        out.append(f"{size}: exact dense p50 {best_p50:.3f} ms, batch {best_qps:,.0f} QPS")
        for r in rs:
            if r.family.startswith("CSR") or r.family == "HNSW32":
                line = (f"  {r.method}: recall {r.recall:.3f}, latency x{best_p50 / r.p50_ms:.1f}, "
                        f"throughput x{r.qps / best_qps:.2f}")
                peer = next((h for h in hnsw if h.recall >= r.recall), None)
                if r.family.startswith("CSR") and peer is not None:
                    line += f"; HNSW32 at >= this recall ({peer.method}, {peer.recall:.3f}) p50 {peer.p50_ms:.3f} ms"
                out.append(line)
        default = next(r for r in rs if "default search" in r.method)
        out.append(f"  BAR default search: recall {default.recall:.3f} (>= 0.95), latency x{best_p50 / default.p50_ms:.1f}"
                   f" (>= 10), busiest latent {default.busiest:.3f} (<= 0.10)")
        peer = next((h for h in hnsw if h.recall >= default.recall), None)
        vs = (f"p50 {default.p50_ms:.3f} ms = x{default.p50_ms / peer.p50_ms:.2f} faiss HNSW32's at >= its recall "
              f"({peer.method}, {peer.recall:.3f}, {peer.p50_ms:.3f} ms)" if peer else "no HNSW32 row reaches its recall")
        out.append(f"  BAR {size} default search vs HNSW32: recall {default.recall:.3f} (>= 0.95), {vs} (<= 2), "
                   f"{default.bytes_per_vector:.0f} B/vector (<= 800)")
    return "\n".join(out)


def plot(rows: list[Row], path: Path) -> None:
    sizes = list(dict.fromkeys(r.size for r in rows))
    fig, axes = subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        fams: dict[str, list[Row]] = {}
        for r in rows:
            if r.size == size:
                fams.setdefault(r.family, []).append(r)
        for fam, rs in fams.items():
            rs = sorted(rs, key=lambda r: r.recall)
            style = "-o" if fam in ("HNSW32", "IVF-PQ") else ("s" if fam == "exact dense" else "o")
            ax.plot([r.recall for r in rs], [1e3 / r.p50_ms for r in rs], style, label=fam, alpha=0.8)
        ax.axvline(0.95, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact dense top-10")
        ax.set_ylabel("single queries/s (1 thread, 1/p50, log)")
        ax.set_title(f"pypi {size}: speed vs recall (2-core CPU)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100k,1m")
    parser.add_argument("--singles", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--singles-slow", type=int, default=50, help="the same, for scan-based methods")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "speed.png")
    parser.add_argument("--no-scifact", action="store_true")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    pin_threads(THREADS)
    rows: list[Row] = []
    report: dict = {"load_start": os.getloadavg()}
    for size in args.sizes.split(","):
        xb, xq = load_data(size, args.cache)
        truth = ground_truth(xb, xq, size, args.cache)
        rows += dense_rows(size, xb, xq, truth, args)
        rows += kannolo_rows(size, xb, xq, truth, args)
        csr, report[f"paired_{size}"] = csr_rows(size, xb, xq, truth, args)
        rows += csr
        report[f"load_after_{size}"] = os.getloadavg()
        print(table([r for r in rows if r.size == size]), flush=True)
        del xb
    if not args.no_scifact:
        report["scifact_ndcg10"] = scifact_quality()
    print()
    print(table(rows))
    print()
    print(ratios(rows))
    for size in args.sizes.split(","):
        p = report[f"paired_{size}"]
        print(f"  BAR {size} default search vs exact dense, alternating rounds: x{p['speedup_median']:.1f} "
              f"(rounds {p['speedup_min']:.1f}-{p['speedup_max']:.1f}; p50 {p['csr_p50_ms']} vs {p['dense_p50_ms']} ms)")
    print()
    print(json.dumps(report, indent=1, default=str))
    (args.cache / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], **report}, default=str))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
