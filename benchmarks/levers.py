"""What each training lever buys: quality and time of the default adapter against one change at a time.

    python benchmarks/levers.py [--threads 2] [--only default,random-start] [--long]

Each row trains ``CSRIndex(384)`` with the library defaults except the one change named, on
SciFact (5,183 corpus vectors: NDCG@10 of the code, asymmetric and default scores, 300
labelled queries) and on pypi-100k (100,000 vectors: training seconds, recall@10 of the
default ``search(q, 10)`` against the exact top-10 of 1,000 held-out queries, busiest latent).
One seed (0), ``--threads`` threads, nothing cached: every figure is from this run. Training
differs by seed by about +-0.005 in pypi recall and +-0.01 in SciFact NDCG@10 (code score),
so read differences smaller than that as noise. ``--long`` adds ``CSRConfig.long()`` (~20 min).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import DATA, load_scifact, pin_threads
from csr_index import CSRConfig, CSRIndex
from csr_index.evaluation import evaluate_run
from csr_index.io import read_embeddings

LEVERS: dict[str, dict] = {
    "default": {},
    "random start (init='random')": {"init": "random"},
    "no dictionary rounds (init_rounds=0: data samples as rows)": {"init_rounds": 0},
    "400 steps": {"steps": 400},
    "1,200 steps": {"steps": 1200},
    "batch 256, 600 steps": {"batch_size": 256, "steps": 600},
    "lr 1e-3": {"lr": 1e-3},
    "distillation of the prefixes too (prefix_distill)": {"prefix_distill": True},
    "no 4k term (multi_k_weight=0)": {"multi_k_weight": 0.0},
    "the paper's 4k weight (multi_k_weight=1/8)": {"multi_k_weight": 1 / 8},
    "sharper distillation (distill_temperature=0.05)": {"distill_temperature": 0.05},
    "AuxK on (beta=1/32)": {"beta": 1 / 32},
}


def scifact(config: CSRConfig, data) -> dict:
    xb, keys, xq, qkeys, qrels = data
    index = CSRIndex(xb.shape[1], config=config)
    start = time.perf_counter()
    index.train(xb)
    seconds = time.perf_counter() - start
    index.add(xb, keys=list(keys))
    out = {"scifact_train_s": seconds}
    for name, kw in (("code", dict(score="code", rerank=0)), ("asym", dict(score="asymmetric", rerank=0)),
                     ("default", {})):
        D, I = index.search(xq, 10, **kw)
        out[name] = evaluate_run(qrels, qkeys, D, index.keys_of(I))["nDCG@10"]
    return out


def pypi(config: CSRConfig, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray) -> dict:
    index = CSRIndex(xb.shape[1], config=config)
    start = time.perf_counter()
    index.train(xb)
    seconds = time.perf_counter() - start
    index.add(xb)
    found = index.search(xq, 10)[1]
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
    return {"pypi_train_s": seconds, "recall": recall, "busiest": index.stats()["busiest_latent_doc_fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated row names (prefixes) to run")
    parser.add_argument("--long", action="store_true", help="add CSRConfig.long()")
    args = parser.parse_args()
    pin_threads(args.threads)
    sci = load_scifact()
    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors.astype(np.float32)
    xq = read_embeddings(DATA / "pypi-100k" / "queries.parquet").vectors.astype(np.float32)
    truth = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    rows = [(name, lambda o=overrides: CSRConfig(**o)) for name, overrides in LEVERS.items()]
    if args.long:
        rows.append(("long schedule (CSRConfig.long())", CSRConfig.long))
    wanted = [w for w in args.only.split(",") if w]
    results = []
    for name, make in rows:
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        r = {"lever": name, **scifact(make(), sci), **pypi(make(), xb, xq, truth)}
        results.append(r)
        print(r, flush=True)
    print(f"\n{args.threads} threads, seed 0")
    print("| lever | SciFact code | asymmetric | default | SciFact train s | pypi train s | pypi recall@10 | busiest latent |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['lever']} | {r['code']:.4f} | {r['asym']:.4f} | {r['default']:.4f} | {r['scifact_train_s']:.0f} | "
              f"{r['pypi_train_s']:.0f} | {r['recall']:.4f} | {r['busiest']:.1%} |")


if __name__ == "__main__":
    main()
