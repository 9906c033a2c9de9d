"""No-collapse check: NDCG@10 along a training run 5x longer than the default, on SciFact.

    python benchmarks/stability.py [--factor 5] [--points 10] [--plot docs/stability.png]

Trains the default adapter (k=32) once with the default number of steps and once with
``factor`` times as many, evaluating the longer run at ``points`` checkpoints (code and
asymmetric scoring, NDCG@10). Prints the curve and the final difference.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import ROOT, THREADS, load_scifact, pin_threads, save_figure, scifact_index, subplots
from csr_index import CSRConfig, CSREncoder, CSRIndex
from csr_index.evaluation import evaluate_run

DEPTH = 100


def evaluate(index: CSRIndex, xb, doc_keys, xq, query_keys, qrels) -> dict[str, float]:
    index.reset()
    index.add(xb)
    out = {}
    for score in ("code", "asymmetric"):
        D, I = index.search(xq, DEPTH, score=score, rerank=0)
        keys = np.where(I >= 0, doc_keys[np.maximum(I, 0)], None)
        out[score] = evaluate_run(qrels, query_keys, D, keys)["nDCG@10"]
    index.reset()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=int, default=5)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "stability.png"))
    args = parser.parse_args()
    pin_threads(THREADS)
    xb, doc_keys, xq, query_keys, qrels = load_scifact()
    d = xb.shape[1]
    base_steps = CSRConfig().train_steps(len(xb))

    index = scifact_index(32)  # the defaults (training is deterministic), cached and shared with quality.py
    default = evaluate(index, xb, doc_keys, xq, query_keys, qrels)
    print(f"default schedule: {base_steps} steps, {index.train_stats['seconds']:.0f}s, NDCG@10 {default}", flush=True)

    long_steps = args.factor * base_steps
    curve: list[tuple[int, dict[str, float]]] = []
    long_index = CSRIndex(d, config=CSRConfig(steps=long_steps))

    def checkpoint(step: int, adapter) -> None:
        state = {name: t.detach().cpu().numpy().copy() for name, t in adapter.state_dict().items()}
        probe = CSRIndex.from_encoder(CSREncoder.from_state(long_index.encoder.meta(), state))
        if probe.config.idf_weights:  # as CSREncoder.fit does after its last step
            codes = probe.encode(xb)
            probe.adapter.set_latent_weights(torch.from_numpy(codes.indices.astype(np.int64)),
                                             torch.from_numpy(codes.values), len(xb))
        curve.append((step, evaluate(probe, xb, doc_keys, xq, query_keys, qrels)))
        print(f"  {args.factor}x run, step {step:6d}: {curve[-1][1]}", flush=True)

    from csr_index.train import train_adapter

    every = max(1, long_steps // args.points)
    train_adapter(long_index.prepare(xb), d, long_index.h, long_index.config, callback=checkpoint,
                  callback_every=every)
    final = curve[-1][1]
    print()
    print("| run | steps | code NDCG@10 | asymmetric NDCG@10 |")
    print("|---|---:|---:|---:|")
    print(f"| default | {base_steps} | {default['code']:.4f} | {default['asymmetric']:.4f} |")
    print(f"| {args.factor}x longer | {long_steps} | {final['code']:.4f} | {final['asymmetric']:.4f} |")
    for mode in ("code", "asymmetric"):
        worst = min(c[1][mode] for c in curve[len(curve) // 2 :])
        print(f"{mode}: final - default = {final[mode] - default[mode]:+.4f}; "
              f"worst over the second half of the long run = {worst:.4f}")
    if args.plot:
        fig, ax = subplots(figsize=(7, 4))
        for mode in ("code", "asymmetric"):
            ax.plot([c[0] for c in curve], [c[1][mode] for c in curve], marker="o", label=f"{mode} ({args.factor}x run)")
            ax.scatter([base_steps], [default[mode]], marker="*", s=120, label=f"{mode} (default run)")
        ax.set_xlabel("training step")
        ax.set_ylabel("NDCG@10 (SciFact)")
        ax.set_title("No collapse: quality along a 5x longer training run")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
