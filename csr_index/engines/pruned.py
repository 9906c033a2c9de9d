"""Approximate CPU engine: a sparse shortlist from posting lists, scored exactly from the forward index."""

from __future__ import annotations

import numpy as np

from ..budgets import CANDIDATE_GROWTH, size_factor
from ..codes import SparseCodes
from ..validation import check_positive
from .shortlist import pruned_topn
from .base import empty_result, sparse_query_arrays
from .inverted import InvertedIndexEngine
from .postings import ClusterLists, list_lengths

__all__ = ["PrunedEngine", "PROBE_FRACTION"]

BLOCK_ROWS = 1 << 16
"""An unclustered engine's rows are split into blocks of this many for its lists (all probed):
each list's entries then store their doc as a uint16 offset in its block."""
PROBE_FRACTION = 0.3
"""Default share of a clustered segment's clusters the shortlist reads (the nearest ones): on the
1M set 0.3 kept recall@10 at 0.954 (0.957 unclustered), 0.25 gave 0.948 (``benchmarks/clustered.py``)."""


class PrunedEngine(InvertedIndexEngine):
    """Fast approximate search in two stages, as Seismic does for learned sparse vectors.

    1. Shortlist: the posting lists of the query's ``query_cut`` largest terms (of the
       ``query_k`` latents of its code, see :meth:`CSRIndex.search`) are added term at a time
       into a dense accumulator. Each list holds only its strongest ``list_cut`` x (mean list
       length) entries (static pruning of the longest lists at build, relative so it holds at
       any size), in doc order, 3 bytes an entry (:class:`ClusterLists`: a uint16 offset in the
       entry's cluster or 65,536-row block, a uint8 level of the list's largest value). The
       ``candidates`` best docs by that partial score are kept
       (``candidates`` x ``share`` for a segment that holds that share of the collection's
       rows) by one linear pass with a sampled threshold, not a heap. ``candidates`` is the
       budget up to 100,000 docs; a larger collection of n docs gets ``candidates`` x
       ``(n / 100,000) ** candidates_growth`` (default 0.7: 4,009 at 1M, where 800 lost recall@10
       0.972 -> 0.904; see :mod:`csr_index.budgets`); ``candidates_growth=0`` keeps it fixed.
    2. The shortlist is scored exactly with the whole query (the dense projection in
       asymmetric scoring, all the terms in code scoring) against the forward index
       (k look-ups per doc), and the top-n is returned.

    In a segment clustered at merge (:mod:`csr_index.clusters`: 262,144 rows or more), built with
    its ``clusters`` (row starts, passed by the segment), each query's shortlist reads only its
    ``probe_fraction`` nearest clusters (default 0.3; the searcher picks them): their runs of the
    lists (found in a table of (h, clusters + 1) int32 offsets) and their rows of the
    accumulator, with the same ``candidates``.

    Returned scores are exact; recall depends on the terms and the three knobs and is
    measured in ``benchmarks/speed.py``. The defaults (16 terms, lists cut at 3x their mean
    length, 800 candidates) replaced 1.5x / 1,000: on pypi-100k recall@10 of the default search
    rose from 0.960 to 0.971 at no cost in latency (longer lists, fewer candidates to score
    exactly), for 38 more bytes of postings per vector. With every knob ``None`` and no dense part the
    engine is exact; with a dense part only docs sharing a latent with the terms are found.
    A collection of fewer than ``full_scan_below`` docs is scored exactly, doc by doc (a shortlist
    saves nothing there, as Qdrant's full-scan threshold says): a segment scans exactly when it
    holds fewer than ``full_scan_below`` x ``share`` docs. A small segment of a large collection
    (the latest few adds) takes the shortlist with its share of the budget instead (at least topn
    candidates, its lists uncut): in a churning 100k collection a 1,000-doc segment's full scan
    cost as much as the big segment's 800 candidates (single-query p50 -8 %, recall unchanged).
    """

    name = "pruned"
    exact = False
    takes_clusters = True

    def __init__(
        self,
        codes: SparseCodes,
        query_cut: int | None = 16,
        candidates: int | None = 800,
        list_cut: float | None = 3.0,
        full_scan_below: int = 4096,
        threads: int | None = None,
        values: str | None = None,
        candidates_growth: float = CANDIDATE_GROWTH,
        probe_fraction: float = PROBE_FRACTION,
        clusters: np.ndarray | None = None,
    ) -> None:
        self.query_cut = check_positive(query_cut, "query_cut", allow_none=True)
        self.candidates = check_positive(candidates, "candidates", allow_none=True)
        if list_cut is not None and not (isinstance(list_cut, (int, float, np.number)) and list_cut > 0):
            raise ValueError(f"list_cut must be a positive multiple of the mean list length or None, got {list_cut!r}")
        self.list_cut = None if list_cut is None else float(list_cut)
        self.full_scan_below = int(full_scan_below)
        if not (isinstance(candidates_growth, (int, float, np.number)) and 0 <= candidates_growth <= 1):
            raise ValueError(f"candidates_growth must be a number in [0, 1], got {candidates_growth!r}")
        self.candidates_growth = float(candidates_growth)
        if not (isinstance(probe_fraction, (int, float, np.number)) and 0 < probe_fraction <= 1):
            raise ValueError(f"probe_fraction must be a number in (0, 1], got {probe_fraction!r}")
        self.probe_fraction = float(probe_fraction)
        super().__init__(codes, threads=threads, values=values)
        if clusters is None:  # blocks of BLOCK_ROWS rows, all probed: the lists' docs fit uint16 (ClusterLists)
            starts = np.append(np.arange(0, max(self.n, 1), BLOCK_ROWS, dtype=np.int64), self.n)
        else:
            starts = np.asarray(clusters, dtype=np.int64)
        if starts.ndim != 1 or len(starts) < 2 or starts[0] != 0 or starts[-1] != self.n or (np.diff(starts) < 0).any():
            raise ValueError(f"clusters must be non-decreasing row starts from 0 to n={self.n}")
        self.clusters = None if clusters is None else starts
        self._starts = starts
        self.lists = ClusterLists.build(self.postings, starts)
        """The shortlist's posting lists, compact (see :class:`ClusterLists`)."""
        if self.n >= self.full_scan_below:  # never scanned exactly: the full-width lists are not kept
            self.postings = None
        self._every = np.arange(len(starts) - 1, dtype=np.int64)[None]  # an unclustered engine's probes: every block

    def _list_limit(self, codes: SparseCodes) -> int | None:
        if self.list_cut is None or codes.n < self.full_scan_below:  # a small segment's lists are short
            return None
        lengths = list_lengths(codes)
        return max(1, int(np.ceil(self.list_cut * lengths.sum() / max(1, np.count_nonzero(lengths)))))

    def shortlist_size(self, topn: int, share: float = 1.0) -> int:
        """Candidates a search of this segment scores exactly: ``candidates`` grown for the
        collection's size (``n / share`` docs, see :mod:`csr_index.budgets`) times the segment's
        ``share``, at least ``topn``, at most n (all docs when ``candidates`` is None)."""
        if self.candidates is None:
            return self.n
        grown = self.candidates * size_factor(self.n / share, self.candidates_growth)
        return min(self.n, max(int(np.ceil(grown * share)), topn))

    def options(self) -> dict:
        return {"query_cut": self.query_cut, "candidates": self.candidates, "list_cut": self.list_cut,
                "candidates_growth": self.candidates_growth, "probe_fraction": self.probe_fraction,
                "full_scan_below": self.full_scan_below, **super().options()}

    @property
    def nbytes(self) -> int:
        full = 0 if self.postings is None else self.postings.nbytes
        return full + self.lists.nbytes + self._forward_copies

    def _search(self, queries, topn, scale, skip, share=1.0, probes=None):
        if self.n < self.full_scan_below * share:
            return super()._search(queries, topn, scale, skip, share)
        out_d, out_i = empty_result(queries.n, topn)
        off, sc, sk = self._arrays(queries, scale, skip)
        qptr, qlat, qval = sparse_query_arrays(queries.terms)
        dense = (np.empty((0, self.h), np.float32) if queries.dense is None
                 else np.ascontiguousarray(queries.dense, dtype=np.float32))
        cut = self.h if self.query_cut is None else min(self.query_cut, self.h)
        shortlist = self.shortlist_size(topn, share)
        p, f = self.lists, self.forward
        pruned_topn(self.workers(queries.n), qptr, qlat, qval, dense, cut, shortlist, p.indptr, p.docs, p.vals,
                    p.scale, f.idx, f.vals, f.lut, self.n, self.h, off, sc, sk, self.workspace(queries.n), out_d, out_i,
                    self._every if probes is None else probes, self._starts, p.runs)
        return out_d, out_i
