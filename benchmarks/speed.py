"""Search speed of csr-index's engines against exact dense search, HNSW, IVF-PQ and plain scipy.

    python benchmarks/speed.py [--sizes 100k,1m] [--plot docs/speed.png] [--cache runs/speed-cache]

Data: pypi-100k (100,000 corpus and 1,000 query vectors, all-MiniLM-L6-v2, 384-d) and
"1m": those 100,000 real vectors plus 900,000 SYNTHETIC ones, each the re-normalised
convex mix ``w * a + (1 - w) * b`` of two random corpus vectors a, b (w ~ U(0.5, 0.9),
numpy seed 0). Ground truth: the exact dense top-10 (float32 inner product) per query.

Per method, all in this run: build seconds, bytes per stored vector, recall@10 against
the exact top-10, batch throughput (the 1,000 queries at once, 2 threads) and
single-query latency p50 / p99 (one query at a time, 1 thread). Exact dense is the faster
of numpy BLAS (GEMM / GEMV + argpartition) and faiss IndexFlatIP. CSR rows run the whole
``CSRIndex.search`` (query encoding, engine, exact re-rank against the float16 originals).

The CSR adapters are trained once and cached under ``--cache`` (CSRIndex.save/load);
the 1M index reuses the 100k adapter (only encoding). faiss indexes, the 1M vectors and
the ground truth are cached there too. Also reported: adapter training time, encode
throughput, and SciFact NDCG@10 of the recommended CSR settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numba
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from common import DATA, ROOT, load_scifact, save_figure, subplots
from csr_index import CSRConfig, CSRIndex
from csr_index.rerank import quantize_int8, rerank_topn
from csr_index.evaluation import evaluate_run
from csr_index.io import read_embeddings

TOPK = 10
D = 384
log = logging.getLogger("speed")


@dataclass
class Row:
    size: str
    method: str
    family: str
    setting: str
    build_s: float
    bytes_per_vector: float
    recall: float
    qps: float
    p50_ms: float
    p99_ms: float


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)
    numba.set_num_threads(n)
    torch.set_num_threads(n)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[:TOPK]) & set(b)) / TOPK for a, b in zip(found, truth)]))


def measure(search: Callable[[np.ndarray], np.ndarray], xq: np.ndarray, truth: np.ndarray, singles: int
            ) -> tuple[float, float, float, float]:
    """(recall@10, batch QPS on 2 threads, p50 ms, p99 ms one query at a time on 1 thread)."""
    with threadpool_limits(2):
        set_threads(2)
        search(xq[:4])
        start = time.perf_counter()
        found = search(xq)
        qps = len(xq) / (time.perf_counter() - start)
    with threadpool_limits(1):
        set_threads(1)
        search(xq[:1])
        times = []
        for i in range(min(singles, len(xq))):
            start = time.perf_counter()
            search(xq[i : i + 1])
            times.append(time.perf_counter() - start)
    set_threads(2)
    return recall_at(found, truth), qps, 1e3 * float(np.percentile(times, 50)), 1e3 * float(np.percentile(times, 99))


# ------------------------------------------------------------------ data


def load_data(size: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors.astype(np.float32)
    xq = read_embeddings(DATA / "pypi-100k" / "queries.parquet").vectors.astype(np.float32)
    if size == "100k":
        return xb, xq
    path = cache / "pypi1m-synthetic-f16.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        m = 900_000
        a, b = rng.integers(0, len(xb), m), rng.integers(0, len(xb), m)
        w = rng.uniform(0.5, 0.9, (m, 1)).astype(np.float32)
        mix = w * xb[a] + (1 - w) * xb[b]
        mix /= np.linalg.norm(mix, axis=1, keepdims=True)
        np.save(path, mix.astype(np.float16))
    return np.concatenate([xb, np.load(path).astype(np.float32)]), xq


def ground_truth(xb: np.ndarray, xq: np.ndarray, size: str, cache: Path) -> np.ndarray:
    path = cache / f"gt-{size}.npy"
    if not path.exists():
        flat = faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb)
        np.save(path, flat.search(xq, TOPK)[1])
    return np.load(path)


# ------------------------------------------------------------------ baselines


def dense_rows(size: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, args) -> list[Row]:
    rows = []
    n = len(xb)
    slow = args.singles_slow

    def numpy_search(q: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(q), 256):
            scores = q[s : s + 256] @ xb.T
            top = np.argpartition(-scores, TOPK - 1, axis=1)[:, :TOPK]
            order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
            out.append(np.take_along_axis(top, order, 1))
        return np.concatenate(out)

    rows.append(Row(size, "exact dense (numpy BLAS)", "exact dense", "float32", 0.0, 4 * D,
                    *measure(numpy_search, xq, truth, slow)))
    flat = faiss.IndexFlatIP(D)
    start = time.perf_counter()
    flat.add(xb)
    build = time.perf_counter() - start
    rows.append(Row(size, "exact dense (faiss IndexFlatIP)", "exact dense", "float32", build, 4 * D,
                    *measure(lambda q: flat.search(q, TOPK)[1], xq, truth, slow)))

    hnsw, build = cached_faiss(args.cache / f"hnsw32-{size}.faiss", lambda: faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT), xb, train=False)
    for ef in (16, 32, 64, 128, 256):
        hnsw.hnsw.efSearch = ef
        rows.append(Row(size, "faiss HNSW32", "HNSW32", f"efSearch={ef}", build, 4 * D + 2 * 32 * 4,
                        *measure(lambda q: hnsw.search(q, TOPK)[1], xq, truth, args.singles)))
    nlist = 1024 if n <= 200_000 else 4096
    ivf, build = cached_faiss(args.cache / f"ivfpq-{size}.faiss",
                              lambda: faiss.index_factory(D, f"IVF{nlist},PQ48", faiss.METRIC_INNER_PRODUCT), xb, train=True)
    for nprobe in (8, 32, 128):
        ivf.nprobe = nprobe
        rows.append(Row(size, f"faiss IVF{nlist},PQ48", "IVF-PQ", f"nprobe={nprobe}", build, 48 + 8,
                        *measure(lambda q: ivf.search(q, TOPK)[1], xq, truth, args.singles)))
    return rows


def cached_faiss(path: Path, make: Callable[[], faiss.Index], xb: np.ndarray, train: bool) -> tuple[faiss.Index, float]:
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return faiss.read_index(str(path)), json.loads(meta.read_text())["build_s"]
    set_threads(2)
    index = make()
    start = time.perf_counter()
    if train:
        index.train(xb[np.random.default_rng(0).permutation(len(xb))[:100_000]])
    index.add(xb)
    build = time.perf_counter() - start
    faiss.write_index(index, str(path))
    meta.write_text(json.dumps({"build_s": build}))
    return index, build


# ------------------------------------------------------------------ CSR


def csr_index_for(size: str, h: int, xb: np.ndarray, args) -> CSRIndex:
    """The cached 100k index (trained with ``--steps``), or the 1M one encoded with its adapter."""
    found = sorted(args.cache.glob(f"pypi100k-h{h}-k32-s*.csr"))  # whatever step count was cached
    base = found[0] if found else args.cache / f"pypi100k-h{h}-k32-s{args.steps}.csr"
    if not base.exists():
        index = CSRIndex(D, k=32, h=h, store_vectors=True, config=CSRConfig(steps=args.steps))
        set_threads(2)
        start = time.perf_counter()
        index.train(xb[:100_000])
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        index.add(xb[:100_000])
        index.train_stats.update(wall_seconds=round(train_s, 1), add_seconds=round(time.perf_counter() - start, 2))
        index.save(base)
    if size == "100k":
        return CSRIndex.load(base, verify=False)
    path = args.cache / base.name.replace("pypi100k", f"pypi{size}")
    if not path.exists():
        index = CSRIndex.load(base, verify=False)
        index.reset()
        set_threads(2)
        start = time.perf_counter()
        index.add(xb)
        index.train_stats["add_seconds"] = round(time.perf_counter() - start, 2)
        index.save(path)
    return CSRIndex.load(path, verify=False)


# (label, engine, engine options, query k, re-rank depth)
CSR_SETTINGS: list[tuple[str, str, dict, int | None, int]] = [
    ("scipy SpGEMM, query code k=32", "scipy", {}, 32, 0),
    ("scipy SpGEMM, query code k=32 + rerank 100", "scipy", {}, 32, 100),
    ("inverted exact, query code k=32", "inverted", {}, 32, 0),
    ("inverted exact, query code k=32 + rerank 100", "inverted", {}, 32, 100),
    ("inverted exact, query code k=16 + rerank 100", "inverted", {}, 16, 100),
    ("scipy SpMM, dense query + rerank 100", "scipy", {}, None, 100),
    ("forward scan, dense query + rerank 100", "inverted", {}, None, 100),
    ("forward scan, dense query + rerank 200", "inverted", {}, None, 200),
    ("pruned c=8 cand=500 + rerank 100", "pruned", {"query_cut": 8, "candidates": 500}, None, 100),
    ("pruned c=16 cand=1000 + rerank 100", "pruned", {"query_cut": 16, "candidates": 1000}, None, 100),
    ("pruned c=16 cand=2000 + rerank 200", "pruned", {"query_cut": 16, "candidates": 2000}, None, 200),
    ("pruned c=32 cand=1000 + rerank 200", "pruned", {"query_cut": 32, "candidates": 1000}, None, 200),
    ("pruned c=32 cand=2000 + rerank 200", "pruned", {"query_cut": 32, "candidates": 2000}, None, 200),
    ("pruned c=32 cand=2000 list_cut=4000 + rerank 200", "pruned",
     {"query_cut": 32, "candidates": 2000, "list_cut": 4000}, None, 200),
    ("pruned c=32 cand=2000 + rerank 200, fp16 postings", "pruned",
     {"query_cut": 32, "candidates": 2000, "values": "float16"}, None, 200),
    ("pruned c=32 cand=2000, no rerank", "pruned", {"query_cut": 32, "candidates": 2000}, None, 0),
    ("torch CSR (CPU tensors), query code k=32 + rerank 100", "torch", {"device": "cpu"}, 32, 100),
]
INT8_SETTING = ("pruned c=32 cand=2000 + rerank 200, int8 originals", "pruned", {"query_cut": 32, "candidates": 2000}, None, 200)


def csr_rows(size: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, args) -> list[Row]:
    rows = []
    for h in args.hs if size == "100k" else args.hs[:1]:  # 1M: the first h only (encoding costs minutes)
        index = csr_index_for(size, h, xb, args)
        n = index.ntotal
        encode_s = index.train_stats.get("add_seconds", float("nan"))
        norms_bytes = 4
        settings = CSR_SETTINGS if h == args.hs[0] else [s for s in CSR_SETTINGS if s[1] == "pruned"]
        for label, engine, options, k, rerank in settings:
            if size != "100k" and (engine == "torch" or (engine == "scipy" and (rerank == 0 or k is None))):
                continue  # minutes per setting at 1M on CPU; the torch engine is for GPUs
            index.set_engine(engine, **options)
            start = time.perf_counter()
            eng = index.engine
            build = encode_s + time.perf_counter() - start
            nbytes = eng.nbytes / n + norms_bytes + (2 * D if rerank else 0)

            def search(q: np.ndarray, k=k, rerank=rerank) -> np.ndarray:
                return index.search(q, TOPK, k=k, rerank=rerank)[1]

            scans = engine in ("scipy", "torch") or (engine == "inverted" and k is None)
            singles = args.singles_slow if scans else args.singles
            rows.append(Row(size, "CSR " + label, f"CSR h={h}", f"h={h} k=32", build, nbytes,
                            *measure(search, xq, truth, singles)))
            log.info("%s", rows[-1])
        # int8 originals: the same pipeline, the shortlist re-ranked against int8 vectors
        label, engine, options, k, rerank = INT8_SETTING
        index.set_engine(engine, **options)
        start = time.perf_counter()
        q8, s8 = quantize_int8(np.asarray(index.vectors(), dtype=np.float32))
        build = encode_s + time.perf_counter() - start
        eng = index.engine

        def search8(q: np.ndarray) -> np.ndarray:
            shortlist = index.search(q, rerank, rerank=0)[1]
            return rerank_topn(index.prepare(q, "queries"), shortlist, q8, TOPK, s8, threads=numba.get_num_threads())[1]

        rows.append(Row(size, "CSR " + label, f"CSR h={h}", f"h={h} k=32", build, eng.nbytes / n + norms_bytes + D + 4,
                        *measure(search8, xq, truth, args.singles)))
    return rows


# ------------------------------------------------------------------ extras


def extras(xb: np.ndarray, args) -> dict:
    """Adapter training time (from the cache), encode throughput, re-rank cost."""
    out = {}
    for h in args.hs:
        index = csr_index_for("100k", h, xb, args)
        out[f"h{h}_train"] = index.train_stats
        with threadpool_limits(2):
            set_threads(2)
            x = xb[:20_000]
            index.encode(x[:100])
            start = time.perf_counter()
            index.encode(x)
            out[f"h{h}_encode_vectors_per_s_2threads"] = round(len(x) / (time.perf_counter() - start))
        vec = index.vectors()
        rng = np.random.default_rng(0)
        q = index.prepare(xb[:200])
        with threadpool_limits(1):
            set_threads(1)
            for r in (100, 200, 1000):
                cand = rng.integers(0, len(vec), (200, r))
                rerank_topn(q[:1], cand[:1], vec, TOPK)
                start = time.perf_counter()
                for i in range(200):
                    rerank_topn(q[i : i + 1], cand[i : i + 1], vec, TOPK)
                out[f"h{h}_rerank{r}_ms_per_query_fp16_memmap"] = round((time.perf_counter() - start) / 200 * 1e3, 4)
        set_threads(2)
    return out


def scifact_quality(args) -> list[dict]:
    """NDCG@10 on SciFact of the CSR settings (adapter trained on its corpus; library defaults
    unless ``--scifact-steps``)."""
    xb, doc_keys, xq, query_keys, qrels = load_scifact()
    steps = getattr(args, "scifact_steps", None)
    path = args.cache / f"scifact-h1536-k32-{'default' if steps is None else f's{steps}'}.csr"
    if not path.exists():
        index = CSRIndex(D, k=32, store_vectors=True, config=CSRConfig(steps=steps))
        set_threads(2)
        index.train(xb)
        index.add(xb)
        index.save(path)
    index = CSRIndex.load(path, verify=False)

    def ndcg(D_: np.ndarray, I: np.ndarray) -> float:
        keys = np.where(I >= 0, doc_keys[np.maximum(I, 0)], None)
        return round(evaluate_run(qrels, query_keys, D_, keys)["nDCG@10"], 4)

    flat = faiss.IndexFlatIP(D)
    flat.add(xb)
    out = [{"setting": "exact dense (IndexFlatIP)", "ndcg10": ndcg(*flat.search(xq, 100))}]
    for label, engine, options, k, rerank in CSR_SETTINGS:
        if engine in ("scipy", "torch") or "fp16" in label:
            continue
        index.set_engine(engine, **options)
        out.append({"setting": "CSR " + label, "ndcg10": ndcg(*index.search(xq, 100, k=k, rerank=rerank))})
    return out


# ------------------------------------------------------------------ output


def table(rows: list[Row]) -> str:
    lines = ["| data | method | setting | build s | bytes/vec | recall@10 | QPS (2 thr) | p50 ms | p99 ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.size} | {r.method} | {r.setting} | {r.build_s:.1f} | {r.bytes_per_vector:.0f} | {r.recall:.3f} "
                     f"| {r.qps:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} |")
    return "\n".join(lines)


def ratios(rows: list[Row]) -> str:
    """Speed-ups over exact dense (the faster of numpy and faiss) for the CSR rows with recall >= 0.95."""
    out = []
    for size in dict.fromkeys(r.size for r in rows):
        rs = [r for r in rows if r.size == size]
        dense = [r for r in rs if r.family == "exact dense"]
        best_p50 = min(r.p50_ms for r in dense)
        best_qps = max(r.qps for r in dense)
        out.append(f"{size}: exact dense p50 {best_p50:.3f} ms, batch {best_qps:,.0f} QPS")
        for r in rs:
            if r.family.startswith("CSR") or r.family == "HNSW32":
                out.append(f"  {r.method} [{r.setting}] recall {r.recall:.3f}: latency x{best_p50 / r.p50_ms:.1f}, "
                           f"throughput x{r.qps / best_qps:.2f}")
    return "\n".join(out)


def plot(rows: list[Row], path: Path) -> None:
    sizes = list(dict.fromkeys(r.size for r in rows))
    fig, axes = subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        fams: dict[str, list[Row]] = {}
        for r in rows:
            if r.size == size:
                # CSR points by engine ("CSR h=1536 pruned"), so each kernel shows as its own series
                label = f"{r.family} {r.method.split()[1]}" if r.family.startswith("CSR") else r.family
                fams.setdefault(label, []).append(r)
        for fam, rs in fams.items():
            rs = sorted(rs, key=lambda r: r.recall)
            style = "-o" if fam in ("HNSW32", "IVF-PQ") else ("s" if fam == "exact dense" else "o")
            ax.plot([r.recall for r in rs], [r.qps for r in rs], style, label=fam, alpha=0.8)
        ax.axvline(0.95, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact dense top-10")
        ax.set_ylabel("queries/s (1,000-query batch, 2 threads, log)")
        ax.set_title(f"pypi {size}: throughput vs recall (2-core CPU)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100k,1m")
    parser.add_argument("--hs", default="1536,3072", help="code widths h; the first gets every setting")
    parser.add_argument("--steps", type=int, default=600, help="adapter training steps (cached per value)")
    parser.add_argument("--singles", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--singles-slow", type=int, default=50, help="the same, for scan-based methods")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "speed-cache")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "speed.png")
    parser.add_argument("--no-scifact", action="store_true")
    parser.add_argument("--scifact-steps", type=int, default=None, help="SciFact adapter steps (default: the library's)")
    args = parser.parse_args()
    args.hs = [int(h) for h in args.hs.split(",")]
    args.cache.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)

    rows: list[Row] = []
    report: dict = {"load_start": os.getloadavg()}
    for size in args.sizes.split(","):
        xb, xq = load_data(size, args.cache)
        truth = ground_truth(xb, xq, size, args.cache)
        load = os.getloadavg()
        rows += dense_rows(size, xb, xq, truth, args)
        rows += csr_rows(size, xb, xq, truth, args)
        report[f"load_{size}"] = (load, os.getloadavg())
        print(table([r for r in rows if r.size == size]), flush=True)
        if size == "100k":
            report["extras"] = extras(xb, args)
        del xb
    if not args.no_scifact:
        report["scifact"] = scifact_quality(args)
    report["load_end"] = os.getloadavg()
    print()
    print(table(rows))
    print()
    print(ratios(rows))
    print()
    print(json.dumps({k: v for k, v in report.items()}, indent=1, default=str))
    (args.cache / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], **report}, default=str))
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
