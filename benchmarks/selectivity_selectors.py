"""Per-selector table (how the query's shortlist latents are chosen) of runs/sel/<name>.json files."""
import json, sys
for name in sys.argv[1:]:
    r = json.load(open(f"runs/sel/{name}.json"))
    print(f"\n{name}:\n\n| query latents by | post@8 | 8/C1000/R100 | 8/C2000/R200 | post@16 | 16/C1000/R100 | 16/C2000/R200 |\n|---|---|---|---|---|---|---|")
    sels = sorted({k.split('@')[0] for k in r["postings"]}, key=["code","pre","proj","proj_mu","code_skip","proj_skip"].index)
    for s in sels:
        p, q = r["postings"], r["recall_pipeline"]
        print(f"| {s} | {p[s+'@8']:.3f} | {q[s+'@8/C1000/R100']:.3f} | {q[s+'@8/C2000/R200']:.3f} | {p[s+'@16']:.3f} | {q[s+'@16/C1000/R100']:.3f} | {q[s+'@16/C2000/R200']:.3f} |")
