"""Build time: csr-index train + add against graph indexes on the same vectors, in one run.

    python benchmarks/build.py [--threads 2] [--long] [--skip-1m] [--hnsw-1m]

pypi-100k (100,000 real all-MiniLM-L6-v2 vectors, 1,000 held-out queries), every build on
``--threads`` threads (torch, numba, BLAS, faiss and kANNolo's rayon pool pinned alike):

* ``CSRIndex(384)``: ``train`` (the default fast schedule) + ``add``; with ``--long`` also the
  long schedule (``CSRConfig.long()``, the default before the fast build; ~10 minutes here);
* faiss ``IndexHNSWFlat(384, 32)`` (efConstruction 40, faiss's default) ``add``;
* kANNolo ``DensePlainHNSW`` (m 32, ef_construction 40, as faiss) ``build_from_array``, where it installs.

Each row also gives recall@10 against the exact top-10 at the setting a user would search
with (csr-index's default ``search(q, 10)``; HNSW ef 128), so a faster build is not bought
with worse answers. Then the 1M set (the 100k real vectors + 900,000 SYNTHETIC mixes,
``make_1m.py``): ``csr-index build runs/pypi-1m.parquet`` run as a command, its wall time,
phases and peak RSS; with ``--hnsw-1m`` faiss HNSW32 builds the same 1M vectors too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import DATA, ROOT, pin_threads
from csr_index import CSRConfig, CSRIndex
from csr_index.io import read_embeddings

D = 384
TOPK = 10


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[:TOPK]) & set(b)) / TOPK for a, b in zip(found, truth)]))


def csr_row(name: str, config: CSRConfig, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray) -> dict:
    index = CSRIndex(D, config=config)
    start = time.perf_counter()
    index.train(xb)
    trained = time.perf_counter()
    index.add(xb)
    added = time.perf_counter()
    stats = index.stats()
    return {"method": name, "train_s": trained - start, "add_s": added - trained, "build_s": added - start,
            "recall": recall(index.search(xq, TOPK)[1], truth),
            "note": f"busiest latent {stats['busiest_latent_doc_fraction']:.1%}, fvu {stats['train_fvu']:.3f}"}


def faiss_row(xb: np.ndarray, xq: np.ndarray, truth: np.ndarray) -> dict:
    import faiss

    index = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    index.add(xb)
    build = time.perf_counter() - start
    index.hnsw.efSearch = 128
    return {"method": "faiss IndexHNSWFlat(384, 32), efConstruction 40", "build_s": build,
            "recall": recall(index.search(xq, TOPK)[1], truth), "note": "search at efSearch 128"}


def kannolo_row(xb: np.ndarray, xq: np.ndarray, truth: np.ndarray) -> dict | None:
    try:
        import kannolo
    except ImportError:
        print("kannolo is not installed: its row is left out (pip install kannolo)")
        return None
    start = time.perf_counter()
    index = kannolo.DensePlainHNSW.build_from_array(np.ascontiguousarray(xb).ravel(), D, 32, 40, metric="ip")
    build = time.perf_counter() - start
    found = np.array([index.search(q, TOPK, ef_search=128)[1] for q in xq])
    return {"method": "kANNolo DensePlainHNSW m 32, ef_construction 40", "build_s": build,
            "recall": recall(found, truth), "note": "search at ef 128"}


def thread_env(threads: int) -> dict[str, str]:
    """Environment that pins a child process's thread pools (torch/OpenMP, BLAS, numba, rayon)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "RAYON_NUM_THREADS")
    return {**os.environ, **{name: str(threads) for name in names}}


def build_1m(threads: int, parquet: Path, out: Path) -> dict:
    """``csr-index build`` of the 1M file as a child process: wall seconds, phases, peak RSS (its own)."""
    if not parquet.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_1m.py"), "-o", str(parquet)], check=True)
    cli = Path(sys.executable).with_name("csr-index")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(cli), "build", str(parquet), "-o", str(out), "--k", "32", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=thread_env(threads), stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    output = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"csr-index build failed ({os.waitstatus_to_exitcode(status)}): {output}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss / 2**20, "output": output.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long", action="store_true", help="also train the long schedule (~10 minutes)")
    parser.add_argument("--skip-1m", action="store_true")
    parser.add_argument("--hnsw-1m", action="store_true", help="also build faiss HNSW32 on the 1M vectors")
    parser.add_argument("--parquet", type=Path, default=ROOT / "runs" / "pypi-1m.parquet")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "build.json")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before kANNolo starts its pool
    pin_threads(args.threads)

    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors.astype(np.float32)
    xq = read_embeddings(DATA / "pypi-100k" / "queries.parquet").vectors.astype(np.float32)
    truth = np.argsort(-(xq @ xb.T), axis=1)[:, :TOPK]

    rows = [faiss_row(xb, xq, truth)]
    kannolo = kannolo_row(xb, xq, truth)
    rows += [kannolo] if kannolo else []
    pin_threads(args.threads)
    rows.append(csr_row("csr-index CSRIndex(384): default (dictionary start, 800 steps of 128)", CSRConfig(), xb, xq, truth))
    if args.long:
        rows.append(csr_row("csr-index CSRIndex(384), CSRConfig.long() (2,000 steps of 1,024)", CSRConfig.long(), xb, xq, truth))
    hnsw = rows[0]["build_s"]

    print(f"\npypi-100k, {args.threads} threads")
    print("| method | train s | add s | build s | x faiss HNSW32 | recall@10 | |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        train = f"{r['train_s']:.1f}" if "train_s" in r else ""
        add = f"{r['add_s']:.1f}" if "add_s" in r else ""
        print(f"| {r['method']} | {train} | {add} | {r['build_s']:.1f} | {r['build_s'] / hnsw:.2f} | "
              f"{r['recall']:.4f} | {r['note']} |")

    result = {"threads": args.threads, "pypi100k": rows}
    if not args.skip_1m:
        one = build_1m(args.threads, args.parquet, ROOT / "runs" / "bench-1m.csr")
        result["1m"] = one
        print(f"\n1M (100k real + 900k synthetic), `csr-index build` on {args.threads} threads: "
              f"{one['wall_s']:.1f} s wall, peak RSS {one['peak_rss_gb']:.2f} GB\n  {one['output']}")
        if args.hnsw_1m:
            import faiss

            from common import synthetic_mixes

            x1m = np.concatenate([xb, synthetic_mixes(xb, 900_000)])
            pin_threads(args.threads)
            index = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
            start = time.perf_counter()
            index.add(x1m)
            result["1m"]["faiss_hnsw32_s"] = time.perf_counter() - start
            print(f"  faiss HNSW32 on the same 1M vectors: {result['1m']['faiss_hnsw32_s']:.1f} s "
                  f"(csr-index build / HNSW32 = {one['wall_s'] / result['1m']['faiss_hnsw32_s']:.2f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
