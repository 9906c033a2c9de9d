"""Default work budgets that grow with the collection: shortlist candidates and re-rank depth.

With more docs, more of them outscore a true neighbour on a partial score (the shortlist's
code-space score), so a fixed budget loses recall as the collection grows: on pypi-100k plus
900k synthetic mixes, 800 candidates and a re-rank of 100 gave recall@10 0.972 at 100k and
0.904 at 1M. Up to ``SIZE_REFERENCE`` docs the budgets stay as the engines and
:func:`~csr_index.scoring.default_rerank` define them; beyond it they are multiplied by
:func:`size_factor`. Measured on that 1M set (one thread, exact dense ground truth), the
shortlist's candidates and the re-rank depth gave recall@10 (float16 originals): 800 / 100:
0.972 at 100k, 0.904 at 1M; 1,600 / 200: 0.986 and 0.944; 3,200 / 100: 0.950 at 1M; 3,200 / 200:
0.963 at 1M; so the candidates grew as ``n ** 0.6`` (x4 at 1M: 3,200) and the re-rank as ``n ** 0.3``
(x2 at 1M: 200). With clustered segments (:mod:`csr_index.clusters`) that gave 0.947-0.954 at 1M
depending on the build (training and k-means draws); on the build that gave 0.947, 4,000 / 400 gave
0.955 for about 0.2 ms more per query, so they now grow as ``n ** 0.7`` (x5 at 1M: 4,009) and
``n ** 0.6`` (x4 at 1M: 398).
"""

from __future__ import annotations

__all__ = ["SIZE_REFERENCE", "CANDIDATE_GROWTH", "RERANK_GROWTH", "size_factor"]

SIZE_REFERENCE = 100_000
"""Collection size up to which the default budgets stay fixed."""
CANDIDATE_GROWTH = 0.7
"""Exponent of ``n / SIZE_REFERENCE`` in the pruned engine's default candidates (x5 at 1M)."""
RERANK_GROWTH = 0.6
"""Exponent of ``n / SIZE_REFERENCE`` in the default re-rank depth (x4 at 1M)."""


def size_factor(n: float, exponent: float) -> float:
    """``max(1, n / SIZE_REFERENCE) ** exponent``: how much a default budget grows for ``n`` docs."""
    return max(1.0, float(n) / SIZE_REFERENCE) ** exponent
