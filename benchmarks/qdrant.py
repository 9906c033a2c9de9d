"""Qdrant benchmarks, four of them:

    python benchmarks/qdrant.py scifact    # NDCG@10 through Qdrant: code only, server-side re-rank (adapter
                                           # only), local exact re-rank, sparse datatypes, dense quantization
    python benchmarks/qdrant.py stream     # streaming export of pypi-100k: rate and peak RSS growth
    python benchmarks/qdrant.py engines    # upload rate and latency: qdrant-edge vs CSRIndex's own engine
    python benchmarks/qdrant.py versus-dense   # CSR shards against Qdrant's own dense HNSW (pypi-100k)

``versus-dense`` builds, in one run and all as qdrant-edge shards searched on one thread: Qdrant's
dense HNSW (f32; int8 scalar quantization with the originals on disk) at several ``hnsw_ef``, and
CSR layouts (the one before issue #22, whose dense vector had a graph; the default, without one;
a low-RAM one) at several re-rank depths and query latents. Per row: indexing time (upload, for CSR
including encoding, + optimize until indexed), recall@10 against the exact dense top-10, p50 of one
query per call (end to end: CSR includes query encoding; the rows take turns in random order, a
block of 25 queries each, so that a slow spell of the shared machine hits all rows alike), batch QPS, bytes per point in RAM and on
disk by part (read from the segments' files and configs), and update rounds (upserts + deletes +
optimize). The adapter is ``CSRConfig()`` trained on the corpus, cached in runs/bench-cache:

    python benchmarks/qdrant.py versus-dense                              # pypi-100k, 1000 queries
    python benchmarks/qdrant.py versus-dense --limit 20000 --nq 300 --singles 200   # a quick check

``engines`` serves the same codes of the same index from both, in the same process and run:

    python benchmarks/qdrant.py engines                      # pypi-100k, 100k docs, 1000 queries
    python benchmarks/qdrant.py engines --limit 10000 --nq 300 --steps 100   # a quick check
    python benchmarks/qdrant.py engines --index pypi.csr     # reuse a saved index (no training)

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
import json
import logging
import os
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
from csr_index.query_code import query_row
from csr_index.scoring import default_rerank

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


def engines_args(ap: argparse.ArgumentParser) -> None:
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
    ap.add_argument("--plain", action="store_true",
                    help="Train without load balancing (balance_cap=None): the unselective codes of plain TopK.")


def engines(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = read_embeddings(args.corpus)
    xb = corpus.vectors[: args.limit] if args.limit else corpus.vectors
    keys = corpus.keys[: len(xb)] if corpus.keys is not None else None
    xq = read_embeddings(args.queries).vectors[: args.nq]
    print(f"corpus {args.corpus.parent.name}: {len(xb):,} docs x {xb.shape[1]}, {len(xq)} queries, "
          f"torch threads {torch.get_num_threads()}", file=sys.stderr)

    if args.index is not None:
        index = CSRIndex.from_encoder(CSRIndex.load(args.index).encoder)
        train_s = 0.0
    else:
        # the long schedule's settings at --steps (what the README's figures were measured with)
        config = CSRConfig.long(steps=args.steps, device="cpu", balance_settle=False,
                                **({"balance_cap": None} if args.plain else {}))
        index = CSRIndex(xb.shape[1], k=args.k, config=config)
        _, train_s = timed(lambda: index.train(xb))
    index.set_engine("inverted")  # exact code x code, as Qdrant computes it

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

    print(f"\n{n:,} docs, {len(xq)} queries, k={index.k}, h={index.h}, topk={args.topk}, busiest latent on "
          f"{index.stats()['busiest_latent_doc_fraction']:.1%} of docs (training {train_s:.0f}s, not compared)")
    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':{w}s} | {'CSRIndex engine':>22s} | {'qdrant-edge ' + cq.EDGE_VERSION:>22s} |")
    print(f"|{'-' * (w + 2)}|{'-' * 24}|{'-' * 24}|")
    for name, a, b in rows:
        print(f"| {name:{w}s} | {a:>22s} | {b:>22s} |")


# ======================================================================= SciFact quality
def scifact_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rerank", type=int, default=None,
                    help="Candidates re-ranked (R; default: the library's, 3 * max(100, 10 * topk) for Qdrant).")
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None, help="Where the shards go (default: a temp dir).")


def _bytes_under(path: Path, pattern: str = "*") -> int:
    """Disk blocks really used by the files under ``path`` matching ``pattern`` (sparse files count as used)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob(pattern) if f.is_file())


def scifact(args: argparse.Namespace) -> None:
    """NDCG@10 on SciFact through qdrant-edge with the library-default k=32 adapter (common.scifact_index)."""
    from common import load_scifact, scifact_index
    from csr_index.evaluation import evaluate_run

    xb, doc_keys, xq, query_keys, qrels = load_scifact()
    index = scifact_index(32)  # trained with the defaults on the corpus (cached in runs/bench-cache)
    encoder = index.encoder  # what a client at scale holds
    from csr_index.scoring import default_rerank

    topk = args.topk
    R = args.rerank or default_rerank("code", topk)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="csr-qdrant-scifact-"))
    shutil.rmtree(work, ignore_errors=True)
    corpus = DATA.parent / "scifact" / "corpus.parquet"
    rows: list[tuple[str, str, float, str]] = []
    dense_q = encoder.prepare(xq)
    dense = encoder.prepare(xb) @ dense_q.T
    order = np.argsort(-dense, axis=0)[:topk].T
    dense_ndcg = evaluate_run(qrels, query_keys, np.take_along_axis(dense.T, order, 1), doc_keys[order])["nDCG@10"]

    def ndcg(I: np.ndarray, D: np.ndarray) -> float:
        keys = np.where(I >= 0, doc_keys[np.maximum(I, 0)], None)  # export_parquet ids = row numbers
        return evaluate_run(qrels, query_keys, D, keys)["nDCG@10"]

    def add(name: str, storage: str, D: np.ndarray, I: np.ndarray, seconds: float, note: str = "") -> None:
        value = ndcg(I, D)
        rows.append((name, storage, value, f"{1e3 * seconds / len(xq):.2f}", note))
        print(f"{name:58s} nDCG@10 {value:.4f} ({100 * value / dense_ndcg:.1f} %)", file=sys.stderr, flush=True)

    def shard(name: str, **options):
        """A shard streamed from the corpus Parquet by the adapter alone; indexed (optimizer run with a
        1 KB threshold) so that datatypes and quantization are in force, as in a large collection."""
        edge = cq.EdgeCollection.for_index(work / name, encoder, dense=True, indexing_threshold=1, **options)
        cq.export_parquet(encoder, corpus, edge, dense=True, **options)
        edge.optimize()
        return edge

    def timed_search(target, model, **kw):
        cq.search(model, target, None, xq[:5], topk, **kw)  # warm-up
        t = time.perf_counter()
        out = cq.search(model, target, None, xq, topk, **kw)
        return out, time.perf_counter() - t

    rows.append(("dense exact (numpy, float32)", "-", dense_ndcg, "-", ""))
    base = shard("f32")
    (D, I), t = timed_search(base, encoder, rerank=0)
    add("code x code (Qdrant sparse search)", "sparse f32", D, I, t)
    D32 = D
    (D, I), t = timed_search(base, encoder, rerank=R)
    add(f"server-side re-rank R={R}, adapter only", "sparse f32 + dense f32", D, I, t)
    Ds, Is = D, I
    (D, I), t = timed_search(base, index, rerank=R, rerank_on="local")
    add(f"local exact re-rank R={R} (CSRIndex.rescore, fp16 originals)", "sparse f32 (+ local)", D, I, t)
    same = float(np.mean([set(a) == set(b) for a, b in zip(I, Is)]))
    rows[-1] = rows[-1][:4] + (f"top-{topk} ids = server's for {same:.1%} of queries",)
    (D, I), t = timed_search(base, encoder, rerank=R, hybrid=True)
    add(f"hybrid RRF candidates, server re-rank R={R}", "sparse f32 + dense f32", D, I, t)
    base.close()
    for dt in ("float16", "uint8"):
        edge = shard(f"sparse-{dt}", sparse_datatype=dt)
        (D, I), t = timed_search(edge, encoder, rerank=0)
        add(f"code x code, sparse {dt}", f"sparse {dt}", D, I, t,
            f"scores differ from float32 by up to {np.abs(D - D32).max():.1e} (in force)")
        (D, I), t = timed_search(edge, encoder, rerank=R)
        add(f"server-side re-rank R={R}, sparse {dt}", f"sparse {dt} + dense f32", D, I, t)
        edge.close()
    for label, options in (("dense float16", {"dense_datatype": "float16"}),
                           ("int8 quantized dense", {"quantization": "int8"}),
                           ("binary quantized dense", {"quantization": "binary"})):
        edge = shard(label.replace(" ", "-"), **options)
        dense_bytes = _bytes_under(work / label.replace(" ", "-") / "segments", "vector_storage-dense/*")
        quant_bytes = _bytes_under(work / label.replace(" ", "-") / "segments", "vector_storage-dense/quantized*")
        storage = f"{label}: {(dense_bytes - quant_bytes) / len(xb):,.0f} B/doc originals, " \
                  f"{quant_bytes / len(xb):,.0f} B/doc quantized"
        searches = [("", {})] if "quant" not in label else [
            ("no rescore (Qdrant's default)", {}),
            ("rescore, oversampling 1", {"quantization_rescore": True}),
            (f"rescore, oversampling {R // topk}", {"quantization_rescore": True, "oversampling": R / topk})]
        for note, kw in searches:
            (D, I), t = timed_search(edge, encoder, rerank=R, **kw)
            add(f"server-side re-rank R={R}, {label}" + (f", {note}" if note else ""), storage, D, I, t)
        edge.close()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nSciFact, {len(xb):,} docs, {len(xq)} queries; adapter k={encoder.k}, h={encoder.h}; qdrant-edge "
          f"{cq.EDGE_VERSION}; ms/query = 300 queries in one call, one process")
    print("| method | storage | NDCG@10 | % of dense | ms/query | note |")
    print("|---|---|---:|---:|---:|---|")
    for name, storage, value, ms, note in rows:
        print(f"| {name} | {storage} | {value:.4f} | {100 * value / dense_ndcg:.1f} % | {ms} | {note} |")


# ================================================================= streaming export: rate and memory
def stream_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--corpus", type=Path, default=DATA / "corpus.parquet")
    ap.add_argument("--sample", type=int, default=20000, help="Rows the adapter is trained on.")
    ap.add_argument("--steps", type=int, default=300, help="Adapter training steps (quality is not measured).")
    ap.add_argument("--read-batch-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=256, help="Points per upload request.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every measured process.")
    ap.add_argument("--subset", type=int, default=25000, help="Also stream the first N rows (peak vs size).")
    ap.add_argument("--workdir", type=Path, default=None, help="Where the shards go (default: a temp dir).")


class NullClient:
    """A stand-in QdrantClient that keeps only a count: the export's own memory, with no engine in-process."""

    init_options: dict = {}

    def __init__(self) -> None:
        self.points, self.exists = 0, False

    def query_batch_points(self, *a, **k):  # pragma: no cover - never searched
        raise NotImplementedError

    def collection_exists(self, name):
        return self.exists

    def create_collection(self, name, **kwargs):
        self.exists = True

    def count(self, name, exact=True):
        return type("Count", (), {"count": self.points})()

    def retrieve(self, *a, **k):
        return []

    def upsert(self, name, points, wait=True):
        self.points += len(points)


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def stream_child(args: argparse.Namespace) -> None:
    """One measured export in a fresh process; prints a JSON line (rate, RSS growth over the loaded adapter)."""
    from csr_index import CSREncoder

    spec = json.loads(args.spec)
    torch.set_num_threads(spec["threads"])
    encoder = CSREncoder.load(spec["adapter"])
    encoder.encode(np.random.default_rng(0).standard_normal((256, encoder.d)).astype(np.float32))  # torch warm-up
    import pyarrow.parquet  # noqa: F401  (imports belong to the baseline, not to the export)
    from qdrant_client import models  # noqa: F401
    if spec["target"] == "null":
        target, name = NullClient(), "docs"
    else:
        target, name = cq.EdgeCollection.for_index(spec["shard"], encoder, dense=spec["dense"]), None
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    t = time.perf_counter()
    if spec["mode"] == "stream":
        report = cq.export_parquet(encoder, spec["corpus"], target, name, dense=spec["dense"],
                                   read_batch_size=spec["read_batch_size"], batch_size=spec["batch_size"])
    else:  # the path of a built index: everything encoded and held first
        corpus = read_embeddings(spec["corpus"])
        index = CSRIndex.from_encoder(encoder, store_vectors=spec["dense"])
        index.add(corpus.vectors, keys=corpus.keys)
        report = cq.export(index, target, name, dense=spec["dense"], payload=corpus.table, payload_columns=["text"],
                           join=None, batch_size=spec["batch_size"])
    seconds = time.perf_counter() - t
    print(json.dumps({"points": report.points_count, "seconds": seconds, "peak_mb": (_status("VmHWM") - base) / 2**20,
                      "end_mb": (_status("VmRSS") - base) / 2**20, "base_mb": base / 2**20}))


def stream(args: argparse.Namespace) -> None:
    import subprocess

    from csr_index import CSREncoder

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="csr-qdrant-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(__file__).resolve().parents[1] / "runs" / "bench-cache"
    adapter = cache / f"{args.corpus.parent.name}-sample{args.sample}-s{args.steps}.csr"
    if not adapter.exists():  # the cluster recipe's first step: an adapter trained on a sample
        sample = read_embeddings(args.corpus).vectors
        sample = sample[np.random.default_rng(0).choice(len(sample), args.sample, replace=False)]
        encoder = CSREncoder(sample.shape[1], k=32, config=CSRConfig.long(steps=args.steps, device="cpu",
                                                                                 balance_settle=False))
        _, train_s = timed(lambda: encoder.fit(sample))
        encoder.save(adapter)
        print(f"adapter trained on {args.sample:,} rows in {train_s:.0f}s -> {adapter}", file=sys.stderr)
    runs = [("stream", "null", False, args.corpus), ("stream", "edge", False, args.corpus),
            ("stream", "edge", True, args.corpus), ("built index", "null", False, args.corpus),
            ("built index", "null", True, args.corpus)]
    if args.subset:
        import pyarrow.parquet as pq

        subset = work / f"first-{args.subset}.parquet"  # one row group, like the source
        pq.write_table(pq.read_table(args.corpus).slice(0, args.subset), subset, compression="zstd",
                       row_group_size=args.subset)
        runs.insert(1, ("stream", "null", False, subset))
    rows = []
    for mode, target, dense, corpus in runs:
        shard = work / f"shard-{mode.replace(' ', '-')}-{target}-{dense}"
        shutil.rmtree(shard, ignore_errors=True)
        spec = {"adapter": str(adapter), "corpus": str(corpus), "target": target, "dense": dense,
                "mode": mode, "shard": str(shard), "read_batch_size": args.read_batch_size, "threads": args.threads,
                "batch_size": args.batch_size}
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "_stream-child", json.dumps(spec)], capture_output=True,
                             text=True, env=env, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"{mode} -> {'qdrant-edge shard' if target == 'edge' else 'null client (no engine)'}" + \
                (" + dense" if dense else "")
        rows.append((label, res))
        print(f"{label}: {res}", file=sys.stderr, flush=True)
        shutil.rmtree(shard, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.corpus.parent.name}: export from Parquet (read batches of {args.read_batch_size:,}, requests of "
          f"{args.batch_size}), "
          f"{args.threads} torch thread(s), load {os.getloadavg()[0]:.1f}; RSS growth over the loaded adapter")
    print("| export | points | points/s | peak RSS growth MB | RSS growth at end MB |")
    print("|---|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['points']:,} | {r['points'] / r['seconds']:,.0f} | {r['peak_mb']:.0f} | "
              f"{r['end_mb']:.0f} |")


# ================================================================ CSR in Qdrant against Qdrant's dense HNSW
def versus_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--corpus", type=Path, default=DATA / "corpus.parquet")
    ap.add_argument("--queries", type=Path, default=DATA / "queries.parquet")
    ap.add_argument("--limit", type=int, default=None, help="Use the first N corpus rows (default: all).")
    ap.add_argument("--nq", type=int, default=1000, help="Queries for recall and batch QPS.")
    ap.add_argument("--singles", type=int, default=1000, help="Queries timed one at a time (p50).")
    ap.add_argument("--index", type=Path, default=None,
                    help="Adapter (or index directory) to use instead of the cached one trained with the defaults.")
    ap.add_argument("--ef", default="16,32,64,128", help="hnsw_ef values of the dense HNSW f32 shard.")
    ap.add_argument("--sq-ef", default="32,64,96,128", help="hnsw_ef values of the dense HNSW + int8 SQ shard.")
    ap.add_argument("--rerank", default="200,300", help="Re-rank depths R of the CSR shards.")
    ap.add_argument("--query-k", default="32,24,16", help="Latents of the query code sent as the sparse prefetch.")
    ap.add_argument("--update", default="0.01,0.1",
                    help="Update rounds, one per share: upsert that share of the points with new vectors, delete "
                         "as many others, optimize. Qdrant indexes a segment only past its indexing threshold "
                         "(about 6,500 points of 384 floats), so small rounds time writes, larger ones re-indexing.")
    ap.add_argument("--batch-size", type=int, default=1024, help="Points per upsert, every shard.")
    ap.add_argument("--workdir", type=Path, default=None, help="Where the shards go (default: a temp dir, removed).")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


SINGLES_BLOCK, SINGLES_WARM = 25, 3
"""Single queries are timed in blocks of 25 per row, after 3 untimed ones (see versus_dense)."""
BAR_RECALL = 0.95
"""Issue #22's bar: CSR at this recall@10 against the dense HNSW shard at the hnsw_ef where it first reaches it."""
PARTS = ("dense", "quantized", "graph", "sparse index", "sparse vectors", "other")
SQ_RERANK = {"quantization_rescore": True, "oversampling": 3.0}
"""Server re-rank over int8 vectors: the top 3 * topk by quantized score re-scored with the originals."""


def shard_bytes(path: Path, dense: str, sparse: str) -> dict[str, list[int]]:
    """Disk blocks used by each part of a qdrant-edge shard's segments (WAL left out), as
    ``{part: [bytes held in RAM, bytes left on disk]}``; where a part lives is read from each
    segment's own ``segment.json`` (storage type, index type, quantization ``always_ram``)."""
    out = {part: [0, 0] for part in PARTS}
    for seg in (path / "segments").iterdir():
        if not (seg / "segment.json").is_file():
            continue
        config = json.loads((seg / "segment.json").read_text())["config"]
        dv = config.get("vector_data", {}).get(dense) or {}
        sv = config.get("sparse_vector_data", {}).get(sparse) or {}
        quant = next(iter((dv.get("quantization_config") or {}).values()), {}) or {}
        for f in seg.rglob("*"):
            if not f.is_file():
                continue
            rel = f.relative_to(seg).as_posix()
            if rel.startswith(f"vector_storage-{dense}/"):
                part = "quantized" if "quantized" in rel else "dense"
                ram = bool(quant.get("always_ram")) if part == "quantized" else dv.get("storage_type", "").startswith(
                    "InRam")
            elif rel.startswith(f"vector_index-{dense}/"):
                part, ram = "graph", not ((dv.get("index") or {}).get("options") or {}).get("on_disk")
            elif rel.startswith(f"vector_index-{sparse}/"):
                part, ram = "sparse index", "Ram" in (sv.get("index") or {}).get("index_type", "")
            elif rel.startswith(f"vector_storage-{sparse}/"):
                part, ram = "sparse vectors", False  # read by plain search of small segments only
            else:
                part, ram = "other", not rel.startswith("payload")  # id tracker in RAM, payload mmap
            out[part][0 if ram else 1] += f.stat().st_blocks * 512
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


class DenseShard:
    """A qdrant-edge shard holding only the dense vectors, indexed by Qdrant's HNSW (m 16, ef_construct
    100: Qdrant's defaults), optionally with int8 scalar quantization in RAM and the originals on disk."""

    def __init__(self, path: Path, d: int, quantized: bool) -> None:
        import qdrant_edge as qe

        self.qe, self.quantized = qe, quantized
        quant = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True) if quantized else None
        vectors = {cq.DEFAULT_DENSE_VECTOR_NAME: qe.EdgeVectorParams(d, qe.Distance.Dot, on_disk=True if quantized
                                                                     else None, quantization_config=quant)}
        path.mkdir(parents=True)
        self.shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=vectors, sparse_vectors={},
                                                                   max_search_threads=1))

    def upsert(self, ids: np.ndarray, x: np.ndarray, batch_size: int) -> None:
        qe, name = self.qe, cq.DEFAULT_DENSE_VECTOR_NAME
        for s in range(0, len(ids), batch_size):
            points = [qe.Point(int(i), {name: v}, None) for i, v in zip(ids[s : s + batch_size].tolist(),
                                                                        x[s : s + batch_size].tolist())]
            self.shard.update(qe.UpdateOperation.upsert_points(points))

    def delete(self, ids: np.ndarray) -> None:
        self.shard.update(self.qe.UpdateOperation.delete_points(ids.tolist()))

    def optimize(self) -> None:
        while self.shard.optimize():  # until nothing is left to merge or index
            pass
        self.shard.flush()

    def request(self, q: np.ndarray, topk: int, ef: int):
        qe = self.qe
        params = qe.SearchParams(hnsw_ef=ef, quantization=qe.QuantizationSearchParams(rescore=True)
                                 if self.quantized else None)
        return qe.QueryRequest(limit=topk, query=qe.Query.Nearest(q.tolist(), using=cq.DEFAULT_DENSE_VECTOR_NAME),
                               params=params, with_payload=False, with_vector=False)

    def search(self, xq: np.ndarray, topk: int, ef: int) -> np.ndarray:
        if len(xq) == 1:
            points = [self.shard.query(self.request(xq[0], topk, ef))]
        else:
            points = self.shard.query_batch(self.qe.QueryBatchRequest([self.request(q, topk, ef) for q in xq]))
        I = np.full((len(xq), topk), -1, dtype=np.int64)
        for row, hits in zip(I, points):
            row[: len(hits)] = [p.id for p in hits]
        return I

    def close(self) -> None:
        self.shard.close()


class CSRShard:
    """An :class:`EdgeCollection` laid out by the integration for CSR codes plus the dense vectors that
    re-rank them on the server; filled as a Qdrant user would: the adapter encodes, ``export_codes`` uploads."""

    def __init__(self, path: Path, encoder, **layout) -> None:
        self.encoder = encoder
        self.edge = cq.EdgeCollection.for_index(path, encoder, dense=True, max_search_threads=1, **layout)
        self.layout = layout
        self.searchers: dict[tuple, cq.Searcher] = {}

    def upsert(self, ids: np.ndarray, x: np.ndarray, batch_size: int) -> None:
        from csr_index.integrations.qdrant.metadata import index_metadata

        codes = self.encoder.weigh(self.encoder.encode(x))
        cq.export_codes(codes, ids, self.edge, dense_vectors=x, batch_size=batch_size, resume=False,
                        metadata=index_metadata(self.encoder, cq.DEFAULT_VECTOR_NAME, cq.DEFAULT_DENSE_VECTOR_NAME),
                        **self.layout)

    def delete(self, ids: np.ndarray) -> None:
        import qdrant_edge as qe

        self.edge.shard.update(qe.UpdateOperation.delete_points(ids.tolist()))

    def optimize(self) -> None:
        while self.edge.optimize():
            pass
        self.edge.flush()

    def search(self, xq: np.ndarray, topk: int, **options) -> np.ndarray:
        """Ids found by a :class:`cq.Searcher` with these options, made (and checked) once, as a service would."""
        key = tuple(sorted(options.items()))
        if key not in self.searchers:
            self.searchers[key] = cq.Searcher(self.encoder, self.edge, None, **options)
        return self.searchers[key].search(xq, topk)[1]

    def close(self) -> None:
        self.edge.close()


def versus_dense(args: argparse.Namespace) -> None:
    """Qdrant's dense HNSW shard against CSR shards, all qdrant-edge, built and searched in this run."""
    from common import CACHE, THREADS, cached_index, exact_ids, pin_threads, synthetic_mixes
    from csr_index import CSREncoder

    topk = 10
    logging.getLogger("csr_index.integrations.qdrant.upload").setLevel(logging.ERROR)  # "points from elsewhere"
    corpus = read_embeddings(args.corpus)
    xb_raw = corpus.vectors[: args.limit] if args.limit else corpus.vectors
    xq_raw = read_embeddings(args.queries).vectors[: args.nq]
    n = len(xb_raw)
    if args.index is not None:
        encoder = CSREncoder.load(args.index)
    else:  # library defaults, trained on this corpus (cached: runs/bench-cache, keyed on what changes it)
        encoder = cached_index(args.corpus.parent.name.replace("-", ""), xb_raw, CSRConfig()).encoder
    xb, xq = encoder.prepare(xb_raw), encoder.prepare(xq_raw, "queries")  # unit float32, what every shard gets
    ids = np.arange(n, dtype=np.int64)
    truth = exact_ids(xb, xq, topk, CACHE / f"gt-{args.corpus.parent.name}-n{n}-q{len(xq)}.npy")
    rounds = []  # (upserted ids, their new vectors, deleted ids) per round; a deleted point stays deleted
    alive = np.ones(n, dtype=bool)
    rng = np.random.default_rng(0)
    for r, share in enumerate(float(v) for v in args.update.split(",") if v.strip()):
        m = max(1, round(share * n))
        changed = rng.choice(np.flatnonzero(alive), 2 * m, replace=False)
        alive[changed[m:]] = False
        rounds.append((np.sort(changed[:m]), encoder.prepare(synthetic_mixes(xb, m, seed=1 + r)), np.sort(changed[m:])))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="csr-qdrant-versus-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.corpus.parent.name}: {n:,} docs, {len(xq)} queries ({args.singles} timed one at a time); "
          f"adapter k={encoder.k}, h={encoder.h}; update rounds of {[len(u) for u, _, _ in rounds]} upserts + "
          f"as many deletes; "
          f"{os.cpu_count()} CPUs, qdrant-edge {cq.EDGE_VERSION}", file=sys.stderr, flush=True)

    qk_list, r_list = _ints(args.query_k), _ints(args.rerank)
    csr_searches = [("code x code only (rerank 0)", {"rerank": 0}),
                    (f"defaults (R {default_rerank('code', topk)}, query_k {encoder.k})", {})] + [
        (f"R {r}, query_k {qk}", {"rerank": r, "query_k": qk}) for r in r_list for qk in qk_list]
    layouts = [
        ("Qdrant dense HNSW f32 (m 16, ef_construct 100)", lambda p: DenseShard(p, encoder.d, quantized=False),
         [(f"hnsw_ef {ef}", {"ef": ef}) for ef in _ints(args.ef)]),
        ("Qdrant dense HNSW + int8 SQ (originals on disk, rescore)", lambda p: DenseShard(p, encoder.d, quantized=True),
         [(f"hnsw_ef {ef}", {"ef": ef}) for ef in _ints(args.sq_ef)]),
        ("CSR, dense with HNSW graph (the layout before this release)", lambda p: CSRShard(p, encoder, dense_hnsw=True),
         [(f"R 300, query_k {encoder.k}", {"rerank": 300})]),
        ("CSR, dense without graph (m 0), f32 in RAM", lambda p: CSRShard(p, encoder), csr_searches),
        ("CSR, no graph, sparse f16, dense int8 SQ + originals on disk",
         lambda p: CSRShard(p, encoder, sparse_datatype="float16", quantization="int8", dense_on_disk=True),
         [(label, {**kw, **SQ_RERANK}) if kw.get("rerank") != 0 else (label, kw) for label, kw in csr_searches]),
    ]
    pin_threads(1)
    encoding = []
    for i in range(min(args.singles, len(xq))):
        start = time.perf_counter()
        query_row(encoder, xq[i : i + 1], encoder.k)  # what a single query's search encodes with
        encoding.append(time.perf_counter() - start)
    encode_ms = 1e3 * float(np.median(encoding[5:] or encoding))
    shards, rows = [], []
    for name, make, searches in layouts:  # build every shard first: their queries are timed side by side
        path = work / name.split(",")[0].replace(" ", "-") / str(len(shards))
        shutil.rmtree(path, ignore_errors=True)
        pin_threads(THREADS)
        shard = make(path)
        t0 = time.perf_counter()
        shard.upsert(ids, xb, args.batch_size)  # CSR: encoding + validation + upload
        t1 = time.perf_counter()
        shard.optimize()
        t2 = time.perf_counter()
        build = {"upload": t1 - t0, "optimize": t2 - t1}
        print(f"{name}: upload {build['upload']:.1f}s, optimize {build['optimize']:.1f}s", file=sys.stderr, flush=True)
        shards.append((name, path, shard))
        parts = shard_bytes(path, cq.DEFAULT_DENSE_VECTOR_NAME, cq.DEFAULT_VECTOR_NAME)
        for label, options in searches:
            rows.append({"layout": name, "search": label, "options": options, "shard": shard, "build": build,
                         "parts": parts, "n": n})
    pin_threads(1)  # one query at a time on one thread (the shards search on one thread too)
    runs = [(lambda q, r=row: r["shard"].search(q, topk, **r["options"])) for row in rows]
    for run in runs:  # warm-up
        for i in range(min(5, len(xq))):
            run(xq[i : i + 1])
    # single queries in blocks of SINGLES_BLOCK, the rows taking turns block by block in a fresh random
    # order each round: a slow spell of the shared machine hits every row alike, and each block runs
    # warm on its own shard (the first SINGLES_WARM queries of a block untimed), as a shard serving
    # only its own queries would
    times: list[list[float]] = [[] for _ in rows]
    singles = min(args.singles, len(xq))
    order = np.random.default_rng(0)
    for s in range(0, singles, SINGLES_BLOCK):
        e = min(singles, s + SINGLES_BLOCK)
        for j in order.permutation(len(rows)):
            for i in range(s, min(e, s + SINGLES_WARM)):
                runs[j](xq[i : i + 1])
            for i in range(s, e):
                start = time.perf_counter()
                runs[j](xq[i : i + 1])
                times[j].append(time.perf_counter() - start)
    for row, run, took in zip(rows, runs, times):
        start = time.perf_counter()
        found = run(xq)
        qps = len(xq) / (time.perf_counter() - start)
        row.update(recall=recall_at(found, truth), p50_ms=1e3 * float(np.median(took)), qps=qps)
        print(f"  {row['layout']}, {row['search']}: recall {row['recall']:.3f}, p50 {row['p50_ms']:.2f} ms, "
              f"{qps:,.0f} QPS", file=sys.stderr, flush=True)
    pin_threads(THREADS)
    for name, path, shard in shards:
        updates = []
        for upserted, vectors, deleted in rounds:
            t0 = time.perf_counter()
            shard.upsert(upserted, vectors, args.batch_size)
            shard.delete(deleted)
            t1 = time.perf_counter()
            shard.optimize()
            updates.append((t1 - t0, time.perf_counter() - t1))
            print(f"  {name}: update round of {len(upserted):,}: write {updates[-1][0]:.2f}s, optimize "
                  f"{updates[-1][1]:.2f}s", file=sys.stderr, flush=True)
        for row in rows:
            if row["layout"] == name:
                row["updates"] = updates
        shard.close()
        shutil.rmtree(path, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print_versus(rows, n, len(xq), args.singles, [len(u) for u, _, _ in rounds], encode_ms)


def print_versus(rows: list[dict], n: int, nq: int, singles: int, rounds: list[int], encode_ms: float) -> None:
    def per_point(b: int) -> str:
        return f"{b / n:,.0f}"

    print(f"\n{n:,} docs, {nq} queries (p50 over {singles}, one at a time); qdrant-edge {cq.EDGE_VERSION} shards, one "
          f"search thread; indexing = upload (CSR: + encoding) + optimize until indexed, {os.cpu_count()} CPUs; "
          f"update rounds of {' then '.join(f'{m:,}' for m in rounds)} upserts + as many deletes, each + optimize "
          f"(write s + optimize s). CSR p50 is end to end (cq.Searcher.search): query encoding alone has p50 "
          f"{encode_ms:.2f} ms")
    print("| shard | search | indexing s (upload + optimize) | recall@10 | p50 ms | QPS | RAM B/pt | disk B/pt "
          "| bytes/point by part (RAM; *disk) | update rounds s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        b, p = r["build"], r["parts"]
        updates = "; ".join(f"{w + o:.2f} ({w:.2f} + {o:.2f})" for w, o in r["updates"])
        ram, disk = sum(v[0] for v in p.values()), sum(v[1] for v in p.values())
        by_part = ", ".join(f"{k} {'*' if v[1] > v[0] else ''}{per_point(v[0] + v[1])}" for k, v in p.items()
                            if v[0] + v[1] >= n)  # parts under 1 B/point left out
        print(f"| {r['layout']} | {r['search']} | {b['upload'] + b['optimize']:.1f} ({b['upload']:.1f} + "
              f"{b['optimize']:.1f}) | {r['recall']:.3f} | {r['p50_ms']:.2f} | {r['qps']:,.0f} | {per_point(ram)} | "
              f"{per_point(disk)} | {by_part} | {updates} |")
    dense = [r for r in rows if r["layout"].startswith("Qdrant dense HNSW f32")]
    reach = next((r for r in dense if r["recall"] >= BAR_RECALL), None)
    if reach is None:
        print(f"\nBAR: no dense HNSW f32 row reaches recall@10 {BAR_RECALL}")
        return
    for r in rows:
        if r["layout"].startswith("CSR") and r["recall"] >= BAR_RECALL:
            index_s = r["build"]["upload"] + r["build"]["optimize"]
            print(f"BAR {r['layout']}, {r['search']}: recall {r['recall']:.3f}, p50 x{r['p50_ms'] / reach['p50_ms']:.2f} "
                  f"and indexing x{index_s / (reach['build']['upload'] + reach['build']['optimize']):.2f} the dense "
                  f"HNSW f32 shard's at {reach['search']} (recall {reach['recall']:.3f}, the first to reach "
                  f"{BAR_RECALL}); bar: x3 and x0.5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    engines_args(sub.add_parser("engines", help="qdrant-edge vs CSRIndex engine (pypi-100k)"))
    scifact_args(sub.add_parser("scifact", help="NDCG@10 through Qdrant (SciFact)"))
    stream_args(sub.add_parser("stream", help="streaming export of pypi-100k: rate and peak RSS"))
    versus_args(sub.add_parser("versus-dense", help="CSR shards against Qdrant's dense HNSW (pypi-100k)"))
    child = sub.add_parser("_stream-child")
    child.add_argument("spec")
    args = ap.parse_args()
    {"engines": engines, "scifact": scifact, "stream": stream, "versus-dense": versus_dense,
     "_stream-child": stream_child}[args.what](args)


if __name__ == "__main__":
    main()
