"""Seismic (pyseismic-lsr, extra ``anchors``) on csr-index's own codes: the anchor rows of speed.py.

Seismic indexes the stored codes as code x code scoring sees them (``index.code_vectors()``) and
answers with the same query codes as ``index.query_code_vectors`` (made by the compiled
single-query encoder csr-index's own searches use): its own task is the exact code x code top-k,
which it approximates with blocked, summarised posting lists. Two rows per size: its code x code
top-10 (recall against the dense top-10; the label gives its recall of the exact code x code
top-10, the task it solves), and its top-300 re-ranked exactly against the index's originals
(``index.rescore``), the whole pipeline CSR's default search is. Settings, in the ranges
Seismic's documentation recommends: ``n_postings`` (its static pruning: about that many entries
per list on average) a quarter of the mean list length, ``centroid_fraction`` 0.1,
``summary_energy`` 0.5, ``max_fraction`` 3; search ``query_cut`` 8, ``heap_factor`` 0.9 (a block
is skipped when its summary scores below 0.9 x the current k-th score). Bytes per vector: what
Seismic reports it holds (forward index, postings, block summaries), plus the int8 originals
for the re-ranked row.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from csr_index import CSRIndex
from csr_index.codes import SparseCodes
from csr_index.query_code import query_row

N_POSTINGS_SHARE = 0.25
"""Seismic's ``n_postings``: this share of the mean posting-list length (its lists are pruned to it)."""
QUERY_CUT, HEAP_FACTOR, RERANK_DEPTH = 8, 0.9, 300


def _write_codes(path: Path, codes: SparseCodes) -> None:
    """Seismic's binary input: u32 n, then per vector u32 nnz, u32 sorted components, f32 values."""
    with open(path, "wb") as f:
        f.write(np.uint32(codes.n).tobytes())
        for idx, val in zip(codes.indices, codes.values):
            keep = val > 0
            order = np.argsort(idx[keep])
            f.write(np.uint32(order.size).tobytes())
            f.write(idx[keep][order].astype(np.uint32).tobytes())
            f.write(val[keep][order].astype(np.float32).tobytes())


def _stdout_of(fn: Callable[[], object]) -> tuple[object, str]:
    """Run ``fn`` with file descriptor 1 sent to a temporary file (Seismic's Rust code prints there);
    returns its result and what it printed."""
    with tempfile.TemporaryFile(mode="w+b") as out:
        saved = os.dup(1)
        os.dup2(out.fileno(), 1)
        try:
            result = fn()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        return result, out.read().decode(errors="replace")


def seismic_rows(index: CSRIndex, xq: np.ndarray, row: Callable, measure: Callable) -> list:
    """Seismic's two rows for ``index`` (see the module docstring); [] when pyseismic-lsr is not
    installed. ``row(method, family, build_s, bytes_per_vector, *measured)`` makes a table row and
    ``measure(search)`` times ``search(query_vectors) -> ids`` (speed.py's); Seismic searches one
    query at a time, so its batch column is the queries one after another. ``xq``: the queries."""
    os.environ.setdefault("RAYON_NUM_THREADS", "2")  # its build's thread pool, read when it is imported
    try:
        import seismic
    except ImportError:
        print("pyseismic-lsr is not installed: the Seismic rows are left out (pip install -e '.[anchors]')")
        return []
    docs = index.code_vectors()
    mean_list = np.count_nonzero(docs.values) / max(1, np.count_nonzero(np.bincount(
        docs.indices[docs.values > 0].astype(np.int64), minlength=index.h)))
    n_postings = max(1, int(N_POSTINGS_SHARE * mean_list))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "codes.bin"
        _write_codes(path, docs)
        start = time.perf_counter()
        engine, _ = _stdout_of(lambda: seismic.SeismicIndexRaw.build(
            str(path), n_postings=n_postings, centroid_fraction=0.1, summary_energy=0.5, max_fraction=3.0))
        build = time.perf_counter() - start
    _, report = _stdout_of(engine.print_space_usage_byte)
    total = re.search(r"Total:\s*(\d+)\s*Bytes", report)
    own = int(total.group(1)) / index.ntotal if total else float("nan")
    ids = index.ids

    def top(q: np.ndarray, k: int) -> np.ndarray:
        """Seismic's top-k ids of query vectors ``q``, one at a time, each query's code made by the
        compiled single-query encoder csr-index's own searches use (its latents come ascending,
        as Seismic requires)."""
        out = np.full((len(q), k), -1, dtype=np.int64)
        for i in range(len(q)):
            compiled = query_row(index.encoder, q[i : i + 1], index.k)
            if compiled is None:
                raise ValueError("the Seismic rows encode queries with csr-index's compiled single-query path: "
                                 "float32 queries and an adapter on the CPU with h <= GRAM_MAX_H")
            _, latents, values = compiled
            found = [r[1] for r in engine.search(np.asarray(latents, dtype=np.int32), np.asarray(values, dtype=np.float32),
                                                 k, QUERY_CUT, HEAP_FACTOR, 0, True)]
            out[i, :len(found)] = ids[np.asarray(found, dtype=np.int64)]
        return out

    index.set_engine("inverted")
    exact_code = index.search(xq, 10, score="code", rerank=0)[1]
    index.set_engine("auto")
    found = top(xq, 10)
    code_recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_code)]))
    settings = f"n_postings {n_postings}, query_cut {QUERY_CUT}, heap_factor {HEAP_FACTOR}"
    originals = index.stats().get("memory_vectors_bytes_per_vector", 0.0)
    return [
        row(f"Seismic on CSR codes, code x code top-10, no rerank ({settings}; code recall {code_recall:.3f})",
            "Seismic", build, own, *measure(lambda q: top(q, 10))),
        row(f"Seismic on CSR codes, top-{RERANK_DEPTH} + exact rerank ({settings})", "Seismic", build,
            own + originals, *measure(lambda q: index.rescore(q, top(q, RERANK_DEPTH), 10)[1])),
    ]
