"""Building an index from an embeddings file in bounded memory: train on a sample, add in batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .io import EmbeddingFile, Embeddings
from .progress import progress_bar
from .validation import sample_rows

if TYPE_CHECKING:
    from .index import CSRIndex

__all__ = ["build_from_file"]

log = logging.getLogger(__name__)


def build_from_file(index: "CSRIndex", source: EmbeddingFile | Embeddings, batch_rows: int = 65_536, progress: bool = False,
                    on_phase: Callable[[str], None] | None = None) -> dict[str, float]:
    """Train ``index`` on a random sample of at most ``config.max_train`` rows of ``source`` (a file
    read in batches, or vectors already in memory), then
    encode and add every row, one batch of ``batch_rows`` at a time, and merge the segments.

    Integer ids in the file become the index's ids, string ids its keys. Memory holds the
    sample, one batch and the index itself, never the whole file. Returns seconds per phase
    (train, add, compact); ``on_phase(name)`` is called as each one ends.
    """
    seconds: dict[str, float] = {}

    def done(name: str, start: float) -> float:
        seconds[name] = time.perf_counter() - start
        log.info("%s: %.1f s", name, seconds[name])
        if on_phase is not None:
            on_phase(name)
        return time.perf_counter()

    start = time.perf_counter()
    n, cap = source.num_rows, index.config.max_train
    rng = np.random.default_rng(index.config.seed)
    rows = sample_rows(n, cap, rng)
    rows = np.arange(n) if rows is None else rows
    if len(rows) < n:
        log.info("training on a random sample of %d of the %d vectors (max_train)", len(rows), n)
    index.train(source.rows(rows, batch_rows))
    start = done("train", start)
    with progress_bar(total=n, show=progress, desc="encoding and adding", unit="vec") as bar, \
            index._store.merges_deferred():  # one merge at the end (compact), not one per batch
        for batch in source.batches(batch_rows):
            if batch.ids is not None:
                index.add_with_ids(batch.vectors, batch.ids)
            else:
                index.add(batch.vectors, keys=batch.keys)
            bar.update(len(batch.vectors))
    start = done("add", start)
    index.compact()
    done("compact", start)
    return seconds
