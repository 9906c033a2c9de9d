"""Retrieval quality of CSR codes against dense search and the compressions users pick instead.

    python benchmarks/quality.py [--ks 8,16,32,64] [--long 32] [--plot docs/quality.png]

On BEIR SciFact (all-MiniLM-L6-v2 vectors, 5,183 docs, 300 labelled queries), one
table of NDCG@10 and Recall@100 against bytes per stored vector, for:
- exact dense (faiss IndexFlatIP, float32),
- CSR at each k of --ks, trained on the corpus with the library defaults on 2 torch threads, and at
  each k of --long also with the long schedule (``CSRConfig.long()``, the default before the
  fast build) for comparison (all cached in
  runs/bench-cache by common.scifact_index, keyed by config and thread count), scored three ways
  (code x code, asymmetric, and the default search: a sparse asymmetric shortlist + exact re-rank
  of the top 100); bytes count everything the index holds per vector (codes, id, norm, posting
  lists, and the float16 originals where the row re-ranks),
- PCA to m dims (float32), faiss PQ at 32/64/128 bytes, int8 scalar quantisation,
  binary sign codes (48 bytes, Hamming).
Every figure comes from this run on this machine.
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np

from common import ROOT, THREADS, load_scifact, pin_threads, save_figure, scifact_index, subplots
from csr_index.evaluation import evaluate_run
from csr_index.engines.base import top_entries

DEPTH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="8,16,32,64")
    parser.add_argument("--long", default="", help="k values also trained with CSRConfig.long(), e.g. 32")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "quality.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pin_threads(THREADS)

    xb, doc_keys, xq, query_keys, qrels = load_scifact()
    d = xb.shape[1]
    rows: list[dict] = []

    def add(method: str, family: str, nbytes: float, D: np.ndarray, I: np.ndarray, seconds: float | None = None):
        keys = np.where(I >= 0, doc_keys[np.maximum(I, 0)], None)
        m = evaluate_run(qrels, query_keys, D, keys)
        rows.append({"method": method, "family": family, "bytes": nbytes, "ndcg10": m["nDCG@10"],
                     "recall100": m["R@100"], "train_s": seconds})
        print(f"{method:38s} {nbytes:8.0f} B  nDCG@10 {m['nDCG@10']:.4f}  R@100 {m['R@100']:.4f}", flush=True)

    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    add("dense float32 (IndexFlatIP)", "dense", 4 * d, *flat.search(xq, DEPTH))
    dense_ndcg = rows[0]["ndcg10"]

    for m in (32, 64, 128):
        pca = faiss.PCAMatrix(d, m)
        pca.train(xb)
        yb, yq = pca.apply(xb), pca.apply(xq)
        yb /= np.linalg.norm(yb, axis=1, keepdims=True)  # cosine in the reduced space
        yq /= np.linalg.norm(yq, axis=1, keepdims=True)
        add(f"PCA-{m} float32 (cosine)", "PCA", 4 * m, *top_entries(yq @ yb.T, DEPTH))
    for nbytes in (32, 64, 128):
        pq = faiss.IndexPQ(d, nbytes, 8, faiss.METRIC_INNER_PRODUCT)
        pq.train(xb)
        pq.add(xb)
        add(f"faiss PQ {nbytes} B", "PQ", nbytes, *pq.search(xq, DEPTH))
    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(xb)
    sq.add(xb)
    add("faiss int8 (SQ8)", "int8", d, *sq.search(xq, DEPTH))
    bits_b, bits_q = np.packbits(xb > 0, axis=1), np.packbits(xq > 0, axis=1)
    binary = faiss.IndexBinaryFlat(d)
    binary.add(bits_b)
    dist, idx = binary.search(bits_q, DEPTH)
    add(f"binary sign ({d // 8} B, Hamming)", "binary", d // 8, -dist.astype(np.float32), idx)

    runs = [(int(v), False) for v in args.ks.split(",")] + [(int(v), True) for v in args.long.split(",") if v]
    for k, long in runs:
        index = scifact_index(k, seed=args.seed, long=long)  # trained, or cached from an earlier run
        seconds = index.train_stats["seconds"]
        k, tag = (f"{k}, long schedule", " (long schedule)") if long else (k, "")
        stats = index.stats()  # counts the default engine's own arrays (built here)
        # everything the index holds per vector: codes, id, norm, posting lists; + float16 originals
        full = stats["memory_bytes_per_vector"]
        codes_only = full - stats.get("memory_vectors_bytes_per_vector", 0)
        add(f"CSR k={k} code", "CSR code" + tag, codes_only, *index.search(xq, DEPTH, score="code", rerank=0), seconds)
        add(f"CSR k={k} asymmetric", "CSR asymmetric" + tag, codes_only,
            *index.search(xq, DEPTH, score="asymmetric", rerank=0), seconds)
        add(f"CSR k={k} default search (shortlist + rerank 100)", "CSR rerank 100" + tag, full,
            *index.search(xq, DEPTH, rerank=100), seconds)

    print()
    print("| method | bytes/vector | NDCG@10 | % of dense | Recall@100 | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        train = f"{r['train_s']:.0f}" if r["train_s"] is not None else ""
        print(f"| {r['method']} | {r['bytes']:.0f} | {r['ndcg10']:.4f} | {100 * r['ndcg10'] / dense_ndcg:.1f} % "
              f"| {r['recall100']:.4f} | {train} |")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], path: str) -> None:
    fig, ax = subplots(figsize=(8, 5))
    families: dict[str, list] = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    for family, rs in families.items():
        rs = sorted(rs, key=lambda r: r["bytes"])
        ax.plot([r["bytes"] for r in rs], [r["ndcg10"] for r in rs], marker="o", label=family)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per stored vector (log)")
    ax.set_ylabel("NDCG@10 (SciFact)")
    ax.set_title("Quality vs memory, all-MiniLM-L6-v2 on SciFact")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
