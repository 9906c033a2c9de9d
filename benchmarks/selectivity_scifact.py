"""SciFact NDCG@10 of a CSR training recipe in the three scoring modes (code, asymmetric,
asymmetric + exact re-rank of the top 100), plus the busiest latent's share of docs.

    PYTHONPATH=. python benchmarks/selectivity_scifact.py --name cap4 --config '{"balance_cap": 4}'

Trains on the 5,183 corpus vectors with the library defaults plus the JSON overrides
(one torch thread); writes runs/sel/scifact-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_scifact  # noqa: E402
from csr_index import CSRConfig, CSRIndex  # noqa: E402
from csr_index.evaluation import evaluate_run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="{}")
    ap.add_argument("--h", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    xb, doc_keys, xq, query_keys, qrels = load_scifact()
    # the study ran on the long schedule, before the fast build and the final settling of the cap
    config = CSRConfig.long(device="cpu", balance_settle=False, **json.loads(args.config))
    index = CSRIndex(xb.shape[1], k=32, h=args.h, store_vectors=True, config=config, engine="scipy")
    index.train(xb)
    index.add(xb)
    out = {"name": args.name, "config": json.loads(args.config), "h": index.h}
    for label, kw in (("code", dict(score="code", rerank=0)), ("asymmetric", dict(score="asymmetric", rerank=0)),
                      ("asym+rerank100", dict(score="asymmetric", rerank=100))):
        D, I = index.search(xq, 100, **kw)
        keys = np.where(I >= 0, doc_keys[np.maximum(I, 0)], None)
        out[label] = evaluate_run(qrels, query_keys, D, keys)["nDCG@10"]
    idx, vals = index.codes().indices, index.codes().values
    df = np.bincount(idx[vals > 0].astype(np.int64), minlength=index.h)
    out["busiest_share"] = float(df.max() / len(xb))
    out["fvu"] = index.train_stats["fvu"]
    path = ROOT / "runs" / "sel" / f"scifact-{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
