"""Retrieval quality: reading relevance labels and computing NDCG / Recall with ir-measures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import ir_measures
import numpy as np
from ir_measures import R, nDCG

__all__ = ["read_qrels", "evaluate_run"]


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Relevance labels from a BEIR TSV (``query-id corpus-id score`` with a header) or TREC qrels file."""
    p = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 3:
                qid, did, rel = parts
            elif len(parts) == 4:
                qid, _, did, rel = parts
            else:
                raise ValueError(f"{p}:{lineno}: expected 3 (BEIR) or 4 (TREC) columns, got {len(parts)}")
            try:
                grade = int(float(rel))
            except ValueError:
                if lineno == 1:  # header line
                    continue
                raise ValueError(f"{p}:{lineno}: relevance {rel!r} is not a number") from None
            qrels.setdefault(qid, {})[did] = grade
    if not qrels:
        raise ValueError(f"{p} holds no relevance labels")
    return qrels


def evaluate_run(
    qrels: dict[str, dict[str, int]],
    query_keys: Sequence[str],
    scores: np.ndarray,
    doc_keys: np.ndarray,
    cutoffs: tuple[int, int] = (10, 100),
) -> dict[str, float]:
    """NDCG@c0 and Recall@c1 of a ranked run, as trec_eval / BEIR compute them.

    ``scores`` (nq, m) and ``doc_keys`` (nq, m, object; None = no result) are search
    results in rank order; queries without labels are ignored, as in BEIR.
    """
    run = {}
    for qi, qkey in enumerate(query_keys):
        if qkey not in qrels:
            continue
        docs = {}
        for rank, (dkey, s) in enumerate(zip(doc_keys[qi], scores[qi])):
            if dkey is None or dkey in docs:
                continue
            # rank-derived scores keep our order even where float scores tie
            docs[str(dkey)] = float(len(doc_keys[qi]) - rank)
        run[qkey] = docs
    ndcg_at, recall_at = nDCG @ cutoffs[0], R @ cutoffs[1]
    judged = {q: qrels[q] for q in run}
    result = ir_measures.calc_aggregate([ndcg_at, recall_at], judged, run)
    return {str(ndcg_at): float(result[ndcg_at]), str(recall_at): float(result[recall_at])}
