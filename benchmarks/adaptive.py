"""Adaptive k: one nested model against one dedicated model per budget, on SciFact.

    python benchmarks/adaptive.py [--ks 4,8,16,32,64] [--plot docs/adaptive.png]

For every budget k' it prints NDCG@10 and the median single-query time (one thread) of three
searches with k' query latents: code x code (the query's k'-code, exact inverted engine),
asymmetric (the posting lists of the query's k' latents, every doc found there scored with the
whole projection: pruned engine without candidate cap), and that shortlist + exact re-rank of
the top 100, for:
- dedicated: a model trained for k' with the library defaults (the paper's recipe: one model
  per budget; the defaults include prefixes k'/4, k'/2);
- nested: ONE model trained at k=32 with Matryoshka prefixes (--nested, default 8,16) -- queries cut
  to their k' largest latents, docs stored with k_doc = k' (a smaller index, same model);
- nested, docs at 32: the same model and queries, docs kept at the trained k;
- single-k: a k=32 model trained without prefixes (nested_k=()) used the same way as "nested".
Budgets above the trained k (64) exist only as dedicated models. Trained models are
cached in runs/bench-cache (see common.scifact_index).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import ROOT, THREADS, load_scifact, pin_threads, save_figure, scifact_index, subplots
from csr_index import CSRIndex
from csr_index.evaluation import evaluate_run

DEPTH = 100
NESTED = (8, 16)
TRAINED_K = 32
MODES = ("code", "asymmetric", "rerank")


def _search(index: CSRIndex, xq: np.ndarray, topn: int, kq: int, mode: str):
    if mode == "code":
        index.set_engine("inverted", threads=1)
        return index.search(xq, topn, query_k=kq, score="code", rerank=0)
    index.set_engine("pruned", query_cut=None, candidates=None, threads=1)
    return index.search(xq, topn, query_k=kq, rerank=100 if mode == "rerank" else 0)


def measure(index: CSRIndex, kq: int, data) -> dict[str, float]:
    """NDCG@10 per mode and median single-query milliseconds (code and asymmetric)."""
    _, doc_keys, xq, query_keys, qrels = data
    out: dict[str, float] = {}
    for mode in MODES:
        D, I = _search(index, xq, DEPTH, kq, mode)
        keys = np.where(I >= 0, doc_keys[np.maximum(I, 0)], None)
        out[mode] = evaluate_run(qrels, query_keys, D, keys)["nDCG@10"]
    for mode in ("code", "asymmetric"):
        _search(index, xq[:5], 10, kq, mode)  # warm-up (numba, engine build)
        times = []
        for q in xq:
            start = time.perf_counter()
            _search(index, q[None], 10, kq, mode)
            times.append(time.perf_counter() - start)
        out[f"{mode}_ms"] = 1000 * float(np.median(times))
    index.set_engine("auto")
    return out


def with_doc_k(index: CSRIndex, k_doc: int, xb: np.ndarray) -> CSRIndex:
    """The same adapter with docs re-encoded at ``k_doc`` latents."""
    if index.k_doc == k_doc:
        return index
    index.reset()
    index.k_doc = k_doc
    index.add(xb)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="4,8,16,32,64")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "adaptive.png"))
    parser.add_argument("--nested", default=",".join(map(str, NESTED)), help="prefix budgets of the nested model")
    parser.add_argument("--nested-weight", type=float, default=None, help="CSRConfig.nested_weight (default: 1/len)")
    args = parser.parse_args()
    pin_threads(THREADS)
    ks = sorted(int(v) for v in args.ks.split(","))
    data = load_scifact()
    xb = data[0]

    results: dict[str, dict[int, dict[str, float]]] = {"dedicated": {}, "nested": {}, "nested, docs at 32": {},
                                                       "single-k": {}}
    for kp in sorted(ks, key=lambda v: v == TRAINED_K):  # the k=32 model last: another script may be training it
        results["dedicated"][kp] = measure(scifact_index(kp), kp, data)
        print(f"dedicated k={kp}: {results['dedicated'][kp]}", flush=True)
    nested_k = tuple(int(v) for v in args.nested.split(","))
    for name, nested in (("nested", nested_k), ("single-k", ())):  # () = no prefixes
        model = scifact_index(TRAINED_K, nested_k=nested, nested_weight=args.nested_weight if nested else None)
        for kp in [v for v in ks if v <= TRAINED_K]:
            results[name][kp] = measure(with_doc_k(model, kp, xb), kp, data)
            print(f"{name} k'={kp}: {results[name][kp]}", flush=True)
        if name == "nested":
            with_doc_k(model, TRAINED_K, xb)
            for kp in [v for v in ks if v <= TRAINED_K]:
                results["nested, docs at 32"][kp] = measure(model, kp, data)
                print(f"nested, docs at 32, k'={kp}: {results['nested, docs at 32'][kp]}", flush=True)

    print()
    print("| k' | model | code NDCG@10 | asymmetric | asym + rerank 100 | code ms/query | asym ms/query |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for kp in ks:
        for name, res in results.items():
            if kp in res:
                r = res[kp]
                print(f"| {kp} | {name} | {r['code']:.4f} | {r['asymmetric']:.4f} | {r['rerank']:.4f} "
                      f"| {r['code_ms']:.2f} | {r['asymmetric_ms']:.2f} |")
    print()
    print("nested vs dedicated (relative NDCG@10 difference; the bar is within 2 % at k' = 8, 16, 32):")
    for kp in ks:
        if kp in results["nested"]:
            diffs = {m: 100 * (results["nested"][kp][m] / results["dedicated"][kp][m] - 1) for m in MODES}
            print(f"  k'={kp:3d}: " + ", ".join(f"{m} {v:+.1f} %" for m, v in diffs.items()))
    if TRAINED_K in results["nested"]:
        diffs = {m: 100 * (results["nested"][TRAINED_K][m] / results["single-k"][TRAINED_K][m] - 1) for m in MODES}
        print(f"nested vs single-k objective at k={TRAINED_K} (bar: no more than 1 % lower): "
              + ", ".join(f"{m} {v:+.1f} %" for m, v in diffs.items()))
    if args.plot:
        plot(results, args.plot)


def plot(results: dict[str, dict[int, dict[str, float]]], path: str) -> None:
    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    for name, res in results.items():
        ks = sorted(res)
        for mode, style in (("code", "-o"), ("asymmetric", "--s"), ("rerank", ":^")):
            axes[0].plot(ks, [res[k][mode] for k in ks], style, label=f"{name}, {mode}", alpha=0.8)
        axes[1].plot(ks, [res[k]["code_ms"] for k in ks], "-o", label=f"{name}, code", alpha=0.8)
    axes[0].set_ylabel("NDCG@10 (SciFact)")
    axes[1].set_ylabel("median ms per single query (1 thread)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k' (active latents per query)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].legend(fontsize=7)
    fig.suptitle("Adaptive k: one nested model vs one model per budget")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
