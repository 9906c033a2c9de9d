#!/usr/bin/env bash
# Create ./.venv and install csr-index with every optional part (tests, benchmarks, Qdrant).
# torch is pinned to the CPU build 2.13.0: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[qdrant,test,bench]"
