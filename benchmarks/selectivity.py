"""Selectivity vs fidelity of CSR codes on pypi-100k: train one adapter variant, then measure

- how busy the latents are (share of docs on which the busiest latents fire),
- postings read per query (sum of the doc frequencies of the query's query_cut shortlist latents) / N,
- recall@10 against the exact dense top-10 of: code x code (sqrt-IDF weighted cosine, k = 32);
  the full asymmetric score (forward scan) + exact re-rank; and the shortlist pipeline:
  posting lists of the query's ``query_cut`` best latents -> partial asymmetric scores
  p_q[l] z_d[l] -> best C -> exact asymmetric score (p_q . z_d + x_q . pre_bias) / ||decode(z_d)||
  -> best R re-ranked against the original vectors.

    PYTHONPATH=. python benchmarks/selectivity.py --name cap4 --steps 1000 [--h 3072] [--config '{"balance_cap": 2}']
    PYTHONPATH=. python benchmarks/selectivity.py --name base1000 --config '{"balance_cap": null}'   # plain TopK
    ... --update uniform   # the earlier uniform loss-free balancing (b += step * sign(mean - rate))

--config takes JSON overrides of the CSRConfig defaults (balance_cap = 4 by default since this study).

Writes runs/sel/<name>.json (and the adapter as runs/sel/<name>.pt). Single-threaded on purpose
(shared machine); nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, exact_ids  # noqa: E402
from csr_index import CSRConfig, CSREncoder  # noqa: E402
from csr_index.io import read_embeddings  # noqa: E402
from csr_index.train import train_adapter  # noqa: E402
import csr_index.train as train_mod  # noqa: E402

OUT = ROOT / "runs" / "sel"
TOPK = 10
CUTS = (8, 16, 32)
CS = (500, 1000, 2000)
RS = (100, 200)


def load_pypi():
    xb = read_embeddings(DATA / "pypi-100k" / "corpus.parquet").vectors.astype(np.float32)
    xq = read_embeddings(DATA / "pypi-100k" / "queries.parquet").vectors.astype(np.float32)
    return xb, xq


def recall(found, gt):
    return float(np.mean([len(set(a[:TOPK]) & set(b)) / TOPK for a, b in zip(found, gt)]))


def encode_docs(adapter, x, k, refit=True):
    """Codes (values, int64 indices) and reconstruction norms of unit vectors ``x``, as an index stores them."""
    meta = {"d": adapter.d, "h": adapter.h, "k": k, "metric": "cosine", "train_stats": {},
            "config": CSRConfig(k=k, h=adapter.h, device="cpu").to_dict()}
    encoder = CSREncoder.from_state(meta, {n: t.detach().cpu().numpy() for n, t in adapter.state_dict().items()})
    codes, norms = encoder.encode_prepared(np.ascontiguousarray(x, dtype=np.float32), k, refit=refit)
    return codes.values, codes.indices.astype(np.int64), norms


def to_csr(vals, idx, h):
    n, k = vals.shape
    m = sp.csr_array((vals.ravel().copy(), idx.ravel().copy(), np.arange(0, n * k + 1, k)), shape=(n, h))  # copies: eliminate_zeros works in place
    m.eliminate_zeros()
    return m


def top_by(scores, n):
    """Column-wise top-n rows of scores (N, q): (n, q) rows, unordered."""
    n = min(n, scores.shape[0] - 1)
    return np.argpartition(-scores, n, axis=0)[:n]


def evaluate(adapter, xb, xq, gt, skip_hubs=None):
    h = adapter.h
    N = len(xb)
    vals, idx, norms = encode_docs(adapter, xb, 32)
    Z = to_csr(vals, idx, h)
    df = np.bincount(idx[vals > 0], minlength=h).astype(np.float64)
    res = {"busiest_share": float(df.max() / N), "top10_latent_shares": (np.sort(df)[::-1][:10] / N).round(4).tolist(),
           "latents_over_10pct": int((df > 0.1 * N).sum()), "dead_latents": int((df == 0).sum()),
           "mean_nnz": float((vals > 0).sum(1).mean())}
    res["fvu_docs"] = None
    with torch.inference_mode():
        xt = torch.from_numpy(xq)
        P = adapter.project(xt).numpy()
        pre = adapter.preactivations(xt).numpy()
        sel = pre + adapter.selection_bias.numpy()
        offset = (xt @ adapter.pre_bias).numpy()
        qv, qi, _ = encode_docs(adapter, xq, 32)
        # doc-side FVU of the stored codes
        s = slice(0, 20000)
        xs = torch.from_numpy(xb[s])
        rec = adapter.decode(torch.from_numpy(vals[s]), torch.from_numpy(idx[s].astype(np.int64))).numpy()
        res["fvu_docs"] = float(((xb[s] - rec) ** 2).sum() / ((xb[s] - xb[s].mean(0)) ** 2).sum())
    inv = np.where(norms > 0, 1 / np.maximum(norms, 1e-12), 0).astype(np.float32)
    # mean value of a posting, per latent (for the "expected contribution" selection)
    sums = np.bincount(idx.ravel(), weights=vals.ravel(), minlength=h)
    mu = np.where(df > 0, sums / np.maximum(df, 1), 0)
    selectors = {
        "code": sel,  # the query's own code order (pre + selection bias): what encode() picks
        "pre": pre,   # unbiased pre-activations
        "proj": P,    # the dense projection x_q W^T
        "proj_mu": P * mu[None, :],  # expected partial score of a posting
    }
    if skip_hubs is not None:  # query side only: never read the posting lists of latents above this share of docs
        hub = df > skip_hubs * N
        selectors["code_skip"] = np.where(hub[None, :], -np.inf, sel)
        selectors["proj_skip"] = np.where(hub[None, :], -np.inf, P)
    masks = {}
    for name, s_ in selectors.items():
        order = np.argsort(-s_, axis=1)
        for c in CUTS:
            m = np.zeros_like(P, dtype=bool)
            np.put_along_axis(m, order[:, :c], True, axis=1)
            masks[(name, c)] = m
    res["postings"] = {f"{n}@{c}": float((m.astype(np.float64) @ df).mean() / N) for (n, c), m in masks.items()}
    # code x code: sqrt-IDF weighted, cosine
    w = np.sqrt(np.log((N + 1) / (df + 1))).astype(np.float32)
    dw = vals * w[idx]
    dw /= np.maximum(np.linalg.norm(dw, axis=1, keepdims=True), 1e-12)
    qw = qv * w[qi]
    qw /= np.maximum(np.linalg.norm(qw, axis=1, keepdims=True), 1e-12)
    Zw = to_csr(dw.astype(np.float32), idx, h)
    Qw = to_csr(qw.astype(np.float32), qi, h)
    found_code, found_asym = [], {R: [] for R in RS}
    pipe = {}
    for s in range(0, len(xq), 250):
        q = slice(s, s + 250)
        dense = xb @ xq[q].T  # (N, nq): the exact score, for re-ranking
        code = (Zw @ Qw[q].T).toarray()
        code[code == 0] = -np.inf
        t = top_by(code, TOPK)
        found_code.append(np.take_along_axis(t, np.argsort(-np.take_along_axis(code, t, 0), 0), 0).T)
        A = (Z @ P[q].T + offset[q][None, :]) * inv[:, None]
        for R in RS:  # full asymmetric (forward scan) + re-rank
            cand = top_by(A, R)
            t = np.take_along_axis(cand, top_by(np.take_along_axis(dense, cand, 0), TOPK), 0)
            found_asym[R].append(t.T)
        for (name, c), m in masks.items():
            if c == 32 and name != "code":
                continue
            part = Z @ (P[q] * m[q]).T
            part[part == 0] = -np.inf  # docs sharing none of the query's cut latents are not candidates
            for C in CS:
                cand = top_by(part, C)
                ok = np.isfinite(np.take_along_axis(part, cand, 0))
                ex = np.where(ok, np.take_along_axis(A, cand, 0), -np.inf)
                for R in RS:
                    sub = np.take_along_axis(cand, top_by(ex, R), 0)
                    exs = np.where(np.isfinite(np.take_along_axis(part, sub, 0)), np.take_along_axis(dense, sub, 0), -np.inf)
                    t = np.take_along_axis(sub, top_by(exs, TOPK), 0)
                    pipe.setdefault(f"{name}@{c}/C{C}/R{R}", []).append(t.T)
    res["recall_code"] = recall(np.concatenate(found_code), gt)
    res["recall_asym_full_rerank"] = {R: recall(np.concatenate(v), gt) for R, v in found_asym.items()}
    res["recall_pipeline"] = {key: recall(np.concatenate(v), gt) for key, v in pipe.items()}
    return res


def uniform_update(adapter, rates, k, config):
    """The earlier experiment: b += step * sign(mean rate - rate) (loss-free balancing, MoE)."""
    b = adapter.selection_bias
    b.add_(config.balance_step * torch.sign(rates.mean() - rates))


def proportional_update(adapter, rates, k, config):
    """Soft cap, proportional: b -= step * (rate / cap - 1) for hubs, relax otherwise."""
    cap = config.balance_cap * k / adapter.h
    b = adapter.selection_bias
    over = rates > cap
    b.copy_(torch.where(over, b - config.balance_step * (rates / cap - 1), (b + config.balance_step).clamp_max(0.0)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--h", type=int, default=1536)
    ap.add_argument("--config", default="{}", help="JSON overrides of CSRConfig")
    ap.add_argument("--update", default="cap", choices=["cap", "uniform", "prop"])
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--skip-hubs", type=float, default=None, help="also evaluate query latents chosen among those below this doc share")
    ap.add_argument("--tag", default="", help="suffix of the result file (e.g. for --eval-only variants)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    xb, xq = load_pypi()
    gt = exact_ids(xb, xq, TOPK, OUT / "gt-pypi100k.npy")
    # the study ran on the long schedule, before the fast build and the final settling of the cap
    cfg = CSRConfig.long(steps=args.steps, h=args.h, device="cpu", balance_settle=False, **json.loads(args.config))
    if args.update == "uniform":
        train_mod.update_selection_bias = uniform_update
        if cfg.balance_cap is None:
            cfg.balance_cap = 1.0
    elif args.update == "prop":
        train_mod.update_selection_bias = proportional_update
    pt = OUT / f"{args.name}.pt"
    t0 = time.time()
    if args.eval_only and pt.exists():
        from csr_index.model import SparseAdapter
        adapter = SparseAdapter(xb.shape[1], args.h)
        adapter.load_state_dict(torch.load(pt))
        adapter.eval()
        hist = []
    else:
        result = train_adapter(xb, xb.shape[1], args.h, cfg)
        adapter = result.adapter
        hist = result.history
        torch.save(adapter.state_dict(), pt)
    train_wall = time.time() - t0
    res = evaluate(adapter, xb, xq, gt, skip_hubs=args.skip_hubs)
    res.update(name=args.name + args.tag, h=args.h, steps=args.steps, update=args.update, config=json.loads(args.config),
               train_fvu=hist[-1]["fvu"] if hist else None, wall_s_not_a_timing=round(train_wall))
    b = adapter.selection_bias.numpy()
    res["selection_bias"] = {"min": float(b.min()), "n_negative": int((b < 0).sum())}
    (OUT / f"{args.name}{args.tag}.json").write_text(json.dumps(res, indent=1))
    short = {k: v for k, v in res.items() if k not in ("recall_pipeline", "postings")}
    print(json.dumps(short))
    for sel in ("code", "pre", "proj", "proj_mu") + (("code_skip", "proj_skip") if args.skip_hubs else ()):
        print(sel, "postings", {c: round(res["postings"][f"{sel}@{c}"], 3) for c in CUTS},
              " ".join(f"{key.split('/', 1)[1]}:{v:.3f}" for key, v in res["recall_pipeline"].items()
                       if key.startswith(sel + "@") and "C1000" in key or (key.startswith(sel + "@") and "C2000/R200" in key)))


if __name__ == "__main__":
    main()
