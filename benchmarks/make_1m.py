"""Write the README's 1M set as a Parquet file: 100,000 real pypi vectors + 900,000 SYNTHETIC mixes.

    python benchmarks/make_1m.py [-o runs/pypi-1m.parquet]

Columns: ``id`` int64 (0..999,999; the first 100,000 are the real pypi-100k corpus rows in its
order) and ``embedding`` fixed_size_list<float16>[384]. The synthetic rows are
common.synthetic_mixes (re-normalised convex mixes of two random real vectors, seed 0):
realistic in their statistics, but not real documents. Written in row groups of 65,536, so
``csr-index build runs/pypi-1m.parquet`` can stream it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import DATA, ROOT, synthetic_mixes
from csr_index.io import read_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "runs" / "pypi-1m.parquet")
    args = parser.parse_args()
    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors
    vectors = np.concatenate([xb, synthetic_mixes(xb, 900_000)]).astype(np.float16)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    flat = pa.array(vectors.ravel())
    table = pa.table({"id": pa.array(np.arange(len(vectors), dtype=np.int64)),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    pq.write_table(table, args.output, row_group_size=65_536)
    print(f"wrote {len(vectors):,} vectors to {args.output} ({args.output.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
