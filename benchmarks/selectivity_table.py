"""Markdown tables of the runs/sel/*.json results written by selectivity.py (and scifact-*.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

OUT = ROOT / "runs" / "sel"


def main(names: list[str] | None = None, selector: str = "code") -> None:
    runs = {}
    for p in sorted(OUT.glob("*.json")):
        if p.name.startswith("scifact-") or p.name.startswith("gt"):
            continue
        r = json.loads(p.read_text())
        runs[r["name"]] = r
    sci = {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in OUT.glob("scifact-*.json")}
    names = names or sorted(runs, key=lambda n: p_mtime(n))
    print(f"query latents chosen by: {selector}\n")
    head = ("| variant | h | steps | busiest | >10% | post@8 | post@16 | post@32 | code top10 | asym full+R100 |"
            " 8/C500/R100 | 8/C1000/R100 | 8/C1000/R200 | 8/C2000/R200 | 16/C500/R100 | 16/C1000/R100 | 16/C1000/R200 |"
            " 16/C2000/R200 | SciFact code | asym | asym+rr100 |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for n in names:
        if n not in runs:
            continue
        r = runs[n]
        pp, rp = r["postings"], r["recall_pipeline"]
        s = sci.get(n, {})
        cells = [n, r["h"], r["steps"], f"{r['busiest_share']:.3f}", r["latents_over_10pct"],
                 *(f"{pp[f'{selector}@{c}']:.3f}" for c in (8, 16, 32)), f"{r['recall_code']:.3f}",
                 f"{r['recall_asym_full_rerank']['100']:.3f}",
                 *(f"{rp.get(f'{selector}@{c}/C{C}/R{R}', float('nan')):.3f}" for c, C, R in
                   ((8, 500, 100), (8, 1000, 100), (8, 1000, 200), (8, 2000, 200),
                    (16, 500, 100), (16, 1000, 100), (16, 1000, 200), (16, 2000, 200))),
                 *(f"{s[m]:.4f}" if m in s else "" for m in ("code", "asymmetric", "asym+rerank100"))]
        print("| " + " | ".join(map(str, cells)) + " |")


def p_mtime(name: str) -> float:
    return (OUT / f"{name}.json").stat().st_mtime


if __name__ == "__main__":
    args = sys.argv[1:]
    sel = "code"
    if args and args[0].startswith("--sel="):
        sel = args.pop(0).split("=", 1)[1]
    main(args or None, sel)
