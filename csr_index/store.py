"""The row store: immutable segments plus tombstones, swapped atomically as snapshots.

Every write (add, remove, merge, reset) builds a new :class:`Snapshot` under the
store's lock and replaces the old one in a single assignment; a reader takes the
current snapshot once and uses it to the end, so searches never see half a write
and writers never wait for searches (as Lucene's and Qdrant's segments work).

``add`` appends one segment per batch, O(batch); then the newest segment is merged into
the one before it while that one holds at most ``MERGE_RATIO`` times its live rows, so
segment sizes fall geometrically (at most ~log_4(N / batch) + 1 segments; every search pays
a fixed cost per segment) and a stream of small adds costs O(log N) copies per row. Merges
drop deleted rows. A large memory-mapped segment stays memory-mapped after ``load`` + ``add``
until the rows added after it reach a quarter of its size.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .segment import Segment
from .validation import INT64_MAX

__all__ = ["Snapshot", "RowStore"]

MERGE_RATIO = 4
"""The newest segment is merged into the one before it while that one has at most this many
times its live rows."""
PURGE_FRACTION = 0.25
"""A segment is rewritten without its deleted rows once this fraction of it is deleted."""


def _live(segment: Segment, mask: np.ndarray | None) -> int:
    """Rows of ``segment`` not marked in its deleted ``mask``."""
    return segment.n - (0 if mask is None else int(np.count_nonzero(mask)))


@dataclass(frozen=True)
class Snapshot:
    """The segments of an index at one moment, with a uint8 deleted mask (or None) per segment."""

    segments: tuple[Segment, ...] = ()
    deleted: tuple[np.ndarray | None, ...] = ()
    live_rows: tuple[int, ...] = field(init=False)
    """Live (not deleted) rows of each segment, counted once when the snapshot is made."""

    def __post_init__(self) -> None:
        live = tuple(_live(s, m) for s, m in zip(self.segments, self.deleted))
        object.__setattr__(self, "live_rows", live)

    @property
    def ntotal(self) -> int:
        """Live (not deleted) rows."""
        return sum(self.live_rows)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number, row) of each live id; (-1, -1) where it is absent or deleted."""
        ids = np.asarray(ids, dtype=np.int64)
        seg = np.full(ids.shape, -1, dtype=np.int64)
        rows = np.full(ids.shape, -1, dtype=np.int64)
        for i, (s, mask) in enumerate(zip(self.segments, self.deleted)):
            r = s.rows_of(ids)
            found = r >= 0
            if mask is not None:
                found &= mask[np.maximum(r, 0)] == 0
            seg[found], rows[found] = i, r[found]
        return seg, rows

    def live(self, column: str) -> list[np.ndarray]:
        """A column (``"ids"``, ``"vectors"``, ``"originals"``, ...) of every segment, deleted rows left out."""
        return [getattr(s, column) if m is None else getattr(s, column)[m == 0]
                for s, m in zip(self.segments, self.deleted)]

    def live_ids(self) -> np.ndarray:
        """Every live id, in storage order (segment by segment)."""
        parts = self.live("ids")
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def groups(self, ids: np.ndarray, allow_missing: bool = False):
        """For each segment holding some of ``ids`` (any shape, flattened): (segment, positions in
        ``ids``, rows). KeyError for an id that is not live, unless it is -1 and ``allow_missing``."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        where, rows = self.locate(flat)
        bad = (where < 0) & ((flat >= 0) | (not allow_missing))
        if bad.any():
            raise KeyError(f"unknown ids: {flat[bad][:5].tolist()}")
        return [(seg, np.flatnonzero(where == i), rows[where == i]) for i, seg in enumerate(self.segments)
                if (where == i).any()]


class RowStore:
    """Segments + tombstones behind a lock (writers) and an atomically replaced snapshot (readers)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.snapshot = Snapshot()
        self.deferred = False
        self.next_id = 0
        """One more than the largest id ever added, removed ones included: where new ids start."""
        self.cluster_rows: int | None = None
        """Rows per cluster of merged segments (see :meth:`Segment.merge`); None: not clustered."""

    @contextmanager
    def merges_deferred(self) -> Iterator[None]:
        """Within this block adds append segments without merging them (a bulk load that
        compacts at its end would otherwise copy its growing segments again and again)."""
        with self.lock:
            self.deferred = True
        try:
            yield
        finally:
            with self.lock:
                self.deferred = False

    def __getstate__(self) -> dict:  # copies and pickles drop the lock
        return {"snapshot": self.snapshot, "next_id": self.next_id, "cluster_rows": self.cluster_rows}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.snapshot, self.next_id = state["snapshot"], state["next_id"]
        self.cluster_rows = state.get("cluster_rows")

    def replace(self, segments: list[Segment], deleted: list[np.ndarray | None], next_id: int = 0) -> None:
        """Install new contents (e.g. after ``load``, or none for ``reset``); new ids start at
        ``next_id`` or after the largest id of ``segments``, whichever is larger."""
        with self.lock:
            self.snapshot = Snapshot(tuple(segments), tuple(deleted))
            self.next_id = max([next_id] + [int(s.ids.max()) + 1 for s in segments if s.n])

    def reserve(self, n: int) -> int:
        """Hand out ``n`` new ids, after the largest ever added or reserved; returns the first.
        Concurrent callers get disjoint ranges (ids of a batch that then fails stay unused)."""
        with self.lock:
            start = self.next_id
            if start + n - 1 > INT64_MAX:
                raise ValueError(f"no ids left after the largest ever added ({start - 1}): give ids with add_with_ids")
            self.next_id = start + n
            return start

    def add(self, segment: Segment, replace_existing: bool = False) -> int:
        """Append ``segment``; its ids must be new unless ``replace_existing``, which deletes the
        live rows holding them first, in the same snapshot. Returns the rows replaced."""
        with self.lock:
            snap = self.snapshot
            where, rows = snap.locate(segment.ids)
            present = where >= 0
            if present.any() and not replace_existing:
                raise ValueError(f"ids already in the index: {segment.ids[present][:5].tolist()} "
                                 "(remove_ids them first, or add_with_ids(..., upsert=True))")
            deleted = self._mark(snap, where[present], rows[present])
            self._install(list(snap.segments) + [segment], deleted + [None])
            if segment.n:
                self.next_id = max(self.next_id, int(segment.ids.max()) + 1)
            return int(present.sum())

    def remove(self, ids: np.ndarray) -> int:
        """Delete the live rows holding ``ids`` (unknown ids are ignored); returns how many."""
        with self.lock:
            snap = self.snapshot
            where, rows = snap.locate(np.unique(np.asarray(ids, dtype=np.int64)))
            found = where >= 0
            if found.any():
                self._install(list(snap.segments), self._mark(snap, where[found], rows[found]))
            return int(found.sum())

    def compact(self) -> None:
        """Merge every segment into one without deleted rows (ordered by cluster where
        ``cluster_rows`` asks, see :meth:`Segment.merge`)."""
        with self.lock:
            snap = self.snapshot
            if len(snap.segments) > 1 or any(m is not None for m in snap.deleted) or (
                    snap.segments and snap.segments[0].clusterable(self.cluster_rows)):
                merged = Segment.merge(list(snap.segments), list(snap.deleted), self.cluster_rows)
                self.snapshot = Snapshot((merged,), (None,)) if merged.n else Snapshot()

    def _mark(self, snap: Snapshot, where: np.ndarray, rows: np.ndarray) -> list[np.ndarray | None]:
        """The deleted masks of ``snap`` with (segment, row) pairs added (copy on write)."""
        deleted = list(snap.deleted)
        for i in np.unique(where):
            mask = np.zeros(snap.segments[i].n, np.uint8) if deleted[i] is None else deleted[i].copy()
            mask[rows[where == i]] = 1
            deleted[i] = mask
        return deleted

    def _install(self, segments: list[Segment], deleted: list[np.ndarray | None]) -> None:
        """Purge mostly-deleted segments, merge the newest into its predecessor while the sizes are
        within MERGE_RATIO, then publish the snapshot."""
        for i, (seg, mask) in enumerate(zip(segments, deleted)):
            if mask is not None and mask.sum() >= PURGE_FRACTION * seg.n:
                segments[i], deleted[i] = Segment.merge([seg], [mask], self.cluster_rows), None
        keep = [i for i, s in enumerate(segments) if s.n]
        segments, deleted = [segments[i] for i in keep], [deleted[i] for i in keep]
        while (not self.deferred and len(segments) > 1
               and _live(segments[-2], deleted[-2]) <= MERGE_RATIO * _live(segments[-1], deleted[-1])):
            merged = Segment.merge(segments[-2:], deleted[-2:], self.cluster_rows)
            segments, deleted = segments[:-2] + [merged], deleted[:-2] + [None]
        self.snapshot = Snapshot(tuple(segments), tuple(deleted))
