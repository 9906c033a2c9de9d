"""One machine, a growing collection: encoding speed, many small adds, a 1M streaming build, compaction,
and searches while another thread adds.

    python benchmarks/scale.py [--skip-1m] [--cache runs/bench-cache]

Uses the default CSRIndex(384) adapter trained on pypi-100k (common.cached_index, 2 threads; the
same one benchmarks/speed.py measures) and, for the 1M build, runs/pypi-1m.parquet (written by
benchmarks/make_1m.py when missing: 100k real + 900k SYNTHETIC vectors). Prints:
- encode vectors/s (2 threads) at h = 1536, k = 32, and where the time goes (matmul, top-k, refit);
- one add of 100k vs 50 adds of 2k with a search after each (ratio; results after compact());
- the 1M build as ``csr-index build`` runs it (build_from_file + save): seconds and peak RSS by phase;
- single-query latency before and after compact() of a 50-segment index;
- 3 threads searching while a 4th adds 40,000 vectors: errors, ids lost or duplicated.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common import CACHE, DATA, ROOT, THREADS, cached_index, pin_threads
from csr_index import CSRConfig, CSRIndex
from csr_index.build import build_from_file
from csr_index.io import EmbeddingFile, read_embeddings


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def encode_speed(index: CSRIndex, xb: np.ndarray) -> dict:
    enc, a = index.encoder, index.adapter
    xs = enc.prepare(xb)
    enc.encode_prepared(xs[:2000], enc.k)
    out = {}
    for refit in (True, False):
        start = time.perf_counter()
        enc.encode_prepared(xs, enc.k, refit=refit)
        out[f"encode_vectors_per_s{'' if refit else '_no_refit'}"] = round(len(xs) / (time.perf_counter() - start))
    # where one batch's time goes, on the path encode_prepared takes on a CPU: the product to
    # pre-activations (torch), then the compiled per-row kernel (top-k, gram gather, refit, norms)
    from csr_index.sparsify import encode_rows

    xb_t = torch.from_numpy(xs[: enc.batch_size(enc.k)])
    gram, w_bias = (t.numpy() for t in enc._gram_tables())
    with torch.inference_mode():
        shift = a.latent_bias - a.W @ a.pre_bias
        select = a.selection_bias.numpy() if bool(a.selection_bias.any()) else None
        kernel_args = (gram, a.latent_bias.numpy(), w_bias, float(a.pre_bias.pow(2).sum()))
        parts = {}
        buffer = torch.addmm(shift, xb_t, a.W.T)  # encode_prepared reuses one output buffer, as here
        start = time.perf_counter()
        pre = torch.addmm(shift, xb_t, a.W.T, out=buffer).numpy()
        parts["matmul"] = time.perf_counter() - start
        for refit in (False, True):
            start = time.perf_counter()
            encode_rows(pre, enc.k, *kernel_args, refit, select=select)
            parts["top-k + gram gather + norms" if not refit else "refit"] = time.perf_counter() - start
        parts["refit"] -= parts["top-k + gram gather + norms"]
    total = sum(parts.values())
    out["time_share_per_batch"] = {k: f"{v / total:.0%}" for k, v in parts.items()}
    return out


def small_adds(base: CSRIndex, xb: np.ndarray, xq: np.ndarray) -> dict:
    one = CSRIndex.from_encoder(base.encoder)
    start = time.perf_counter()
    one.add(xb)
    t_one = time.perf_counter() - start
    many = CSRIndex.from_encoder(base.encoder)
    start = time.perf_counter()
    for s in range(0, len(xb), 2000):
        many.add(xb[s : s + 2000])
        many.search(xq[:1], 10)
    t_many = time.perf_counter() - start
    segments = len(many._store.snapshot.segments)
    latency = {}
    for label in ("before compact", "after compact"):
        pin_threads(1)
        many.search(xq[:1], 10)
        times = []
        for i in range(200):
            start = time.perf_counter()
            many.search(xq[i : i + 1], 10)
            times.append(time.perf_counter() - start)
        latency[label] = round(1e3 * float(np.median(times)), 3)
        pin_threads(THREADS)
        if label == "before compact":
            before = many.search(xq, 10)[1]
            many.compact()
    after, bulk = many.search(xq, 10)[1], one.search(xq, 10)[1]
    return {"one_add_100k_s": round(t_one, 2), "50_adds_of_2k_with_search_s": round(t_many, 2),
            "ratio": round(t_many / t_one, 2), "segments_before_compact": segments,
            "identical_results_after_compact": bool((after == bulk).all()),
            "top10_agreement_before_compact": round(float((before == bulk).mean()), 4),
            "single_query_p50_ms": latency}


def build_1m(path: Path, out: Path) -> dict:
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_1m.py"), "-o", str(path)], check=True)
    report = {"rss_mb_before": round(peak_rss_mb())}
    source = EmbeddingFile(path)
    index = CSRIndex(source.dim)
    start = time.perf_counter()
    seconds = build_from_file(index, source, on_phase=lambda name: report.__setitem__(f"peak_rss_mb_after_{name}",
                                                                                      round(peak_rss_mb())))
    save_start = time.perf_counter()
    index.save(out, overwrite=True)  # a rerun replaces the previous run's 1M index
    seconds["save"] = time.perf_counter() - save_start
    report["peak_rss_mb_after_save"] = round(peak_rss_mb())
    report["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    report["total_s"] = round(time.perf_counter() - start, 1)
    report["ntotal"] = index.ntotal
    return report


def concurrent(base: CSRIndex, xb: np.ndarray, xq: np.ndarray) -> dict:
    index = CSRIndex.from_encoder(base.encoder)
    index.add(xb[:10_000])
    errors, done, searches = [], threading.Event(), [0]

    def reader():
        try:
            while not done.is_set():
                _, I = index.search(xq[:8], 10)
                if any(len(set(r[r >= 0])) != (r >= 0).sum() for r in I):
                    raise AssertionError("an id returned twice")
                searches[0] += 1
        except Exception as exc:  # noqa: BLE001 - counted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    for s in range(10_000, 50_000, 2000):
        index.add_with_ids(xb[s : s + 2000], np.arange(s, s + 2000))
    seconds = time.perf_counter() - start
    done.set()
    for t in threads:
        t.join()
    ids = index.ids
    return {"errors": errors, "searches_during_adds": searches[0], "add_40k_s": round(seconds, 2),
            "ntotal": index.ntotal, "expected": 50_000, "duplicated_ids": int(len(ids) - len(np.unique(ids))),
            "lost_ids": int(len(np.setdiff1d(np.arange(50_000), ids)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--skip-1m", action="store_true")
    args = parser.parse_args()
    pin_threads(THREADS)
    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors
    xq = read_embeddings(DATA / "pypi-100k" / "queries.parquet").vectors
    base = cached_index("pypi100k", xb, CSRConfig(), args.cache)
    report = {"encode": encode_speed(base, xb), "small_adds": small_adds(base, xb, xq),
              "concurrent": concurrent(base, xb, xq)}
    for key, value in report.items():
        print(key, value, flush=True)
    if not args.skip_1m:
        report["build_1m"] = build_1m(ROOT / "runs" / "pypi-1m.parquet", ROOT / "runs" / "pypi-1m.csr")
        print("build_1m", report["build_1m"])
    r = report
    print("\nBARS")
    print(f"  encode {r['encode']['encode_vectors_per_s']:,} vectors/s (>= 50,000)")
    print(f"  50 adds of 2k with a search after each / one add of 100k: {r['small_adds']['ratio']} (<= 2), "
          f"identical results after compact: {r['small_adds']['identical_results_after_compact']}")
    c = r["concurrent"]
    print(f"  3 readers while adding 40k: errors {len(c['errors'])}, lost {c['lost_ids']}, duplicated {c['duplicated_ids']}")
    if "build_1m" in r:
        b = r["build_1m"]
        print(f"  1M build {b['total_s']} s (<= 600), peak RSS {b['peak_rss_mb_after_save']} MB (<= 4096)")


if __name__ == "__main__":
    main()
