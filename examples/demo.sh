#!/usr/bin/env bash
# The main job in one command: install, build a CSR index from real data (BEIR SciFact,
# all-MiniLM-L6-v2 vectors), search it, and print its quality beside exact dense search.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"
DATA=../shared/data/scifact
if [ ! -f "$DATA/corpus.parquet" ]; then
    echo "SciFact data not found at $PWD/$DATA: the demo expects ../shared/data next to this repository" >&2
    exit 1
fi
csr-index build "$DATA/corpus.parquet" -o runs/scifact.csr --k 32
csr-index info runs/scifact.csr
echo "--- top 3 documents for the first 2 queries"
# (into a file, not a pipe: `| head` would end the search with SIGPIPE, which pipefail makes fatal)
csr-index search runs/scifact.csr "$DATA/queries.parquet" --topk 3 --quiet > runs/scifact-top3.tsv
head -6 runs/scifact-top3.tsv
echo "--- quality on the 300 labelled SciFact queries"
csr-index eval runs/scifact.csr --queries "$DATA/queries.parquet" --qrels "$DATA/qrels.tsv" --quiet
