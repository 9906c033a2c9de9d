"""On-disk format of an index: one directory, a JSON manifest, safetensors and Arrow IPC files.

Layout of ``index.csr/``::

    manifest.json                     format name/version, encoder and index settings, segments,
                                      every file's size + sha256, next_id (where new ids start),
                                      generation (how many saves wrote this directory)
    adapter.<hash>.safetensors        W, pre_bias, latent_bias, latent_weight (named by content)
    seg-<id>.codes.arrow              one per segment: id int64, indices fixed_size_list<uint16|uint32>[k],
                                      values fixed_size_list<float32|float16>[k], norm float32
                                      (L2 norm of each code's reconstruction), key string (optional),
                                      cluster int32 (a segment ordered by cluster, non-decreasing)
    seg-<id>.vectors.arrow            vector fixed_size_list<float16|int8>[d] (optional, for re-ranking);
                                      int8 (index setting vectors_dtype "int8"; absent: float16) adds
                                      scale float32, row i being vector[i] * scale[i]
    tombstones.<gen>.arrow            segment string, row int64: deleted rows (only when some are)
    .lock                             locked (flock; msvcrt on Windows) while a process saves

This module writes and reads the data files; :mod:`csr_index.manifest` owns the manifest (its
checks, the writer lock, the atomic commit) and :class:`~csr_index.segment.Segment` its Arrow
tables. Segments are immutable, so saving after a small ``add`` writes only the new segment's
files (and a new manifest); files already in the directory are reused. Saving is atomic:
new files are written and fsynced, the directory is fsynced (their entries are durable
before the manifest names them), then ``manifest.json`` is replaced with ``os.replace``
and the directory fsynced again; files no longer named are deleted only after that. A
crash at any moment leaves the old or the new manifest, and every file it names. An
exclusive lock on ``.lock`` stops two processes from saving the same index at once, and a
save that names the generation it expects refuses a directory another writer saved since.
Loading never runs code from the files (JSON, safetensors and Arrow only), checks sizes
(and, with ``verify``, sha256 checksums) before trusting them, and memory-maps the
Arrow files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ._version import __version__
from .config import CSRConfig
from .errors import CorruptIndexError, FormatVersionError
from .manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    check_replace,
    checked_file,
    commit,
    existing_manifest,
    file_entry,
    fsync,
    listed_files,
    sha256_of,
    write_bytes,
    writer_lock,
)
from .segment import Segment

__all__ = ["write_index", "read_adapter", "read_segments"]

log = logging.getLogger(__name__)


def _write_table(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
    fsync(path)


def _open_table(p: Path) -> pa.Table:
    try:
        return pa.ipc.open_file(pa.memory_map(str(p), "r")).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise CorruptIndexError(f"{p} is not a readable Arrow IPC file: {exc}") from exc


def _reusable(root: Path, entry: dict[str, Any] | None, old_names: set[str]) -> bool:
    """An entry's file is already in ``root``, named by the previous manifest, at its size."""
    if entry is None or entry["name"] not in old_names:
        return False
    p = root / entry["name"]
    return p.exists() and p.stat().st_size == entry["bytes"]


def write_index(
    path: str | os.PathLike,
    encoder_meta: dict[str, Any],
    adapter_state: dict[str, np.ndarray],
    settings: dict[str, Any],
    segments: Sequence[Segment],
    deleted: Sequence[np.ndarray | None],
    next_id: int = 0,
    replace_documents: bool = True,
    generation: int | None = None,
) -> int:
    """Write an encoder (its ``meta()`` and adapter ``state()``), its index ``settings`` and
    ``segments`` (with ``deleted`` row masks, one per segment, and ``next_id``, where new ids
    start) to the directory ``path``, atomically (see the module docstring). Without
    ``replace_documents``, a ``path`` that holds documents is refused (FileExistsError) instead of
    replaced. ``generation``: the save count of ``path`` when the caller loaded or last saved it;
    if the directory has been saved since (by another handle or process), StaleIndexError instead
    of losing that save's rows. Returns the new save count (the manifest's ``generation``)."""
    root = Path(path)
    existing_manifest(root)  # before creating anything
    root.mkdir(parents=True, exist_ok=True)
    with writer_lock(root):
        old = existing_manifest(root)  # again, under the lock: what is there now
        current = check_replace(root, old, replace_documents, generation)
        old_names = listed_files(old)
        blob = st_save({k: np.ascontiguousarray(v) for k, v in adapter_state.items()})
        digest = hashlib.sha256(blob).hexdigest()
        adapter = root / f"adapter.{digest[:12]}.safetensors"
        if not (adapter.name in old_names and adapter.exists() and sha256_of(adapter) == digest):
            write_bytes(adapter, blob)  # (a reused file is checked: a damaged one is rewritten)
        seg_entries = []
        for seg in segments:
            if not all(_reusable(root, seg.files.get(role), old_names) for role in seg.roles()):
                seg.files = {}
                for role, table in seg.tables().items():
                    target = root / f"seg-{seg.name}.{role}.arrow"
                    _write_table(target, table)
                    seg.files[role] = file_entry(target)
            seg_entries.append({"name": seg.name, "rows": seg.n, "files": dict(seg.files)})
        tombstones = None
        dead = [(seg.name, np.flatnonzero(mask)) for seg, mask in zip(segments, deleted) if mask is not None]
        dead = [(name, rows) for name, rows in dead if len(rows)]
        if dead:
            target = root / f"tombstones.{uuid.uuid4().hex[:12]}.arrow"
            _write_table(target, pa.table({
                "segment": pa.array([name for name, rows in dead for _ in rows], type=pa.string()),
                "row": pa.array(np.concatenate([rows for _, rows in dead]).astype(np.int64)),
            }))
            tombstones = file_entry(target)
        commit(root, {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "encoder": encoder_meta,
            "index": dict(settings),
            "ntotal": int(sum(seg.n for seg in segments) - sum(len(rows) for _, rows in dead)),
            "next_id": int(next_id),
            "generation": current + 1,
            "adapter": {"name": adapter.name, "bytes": len(blob), "sha256": digest},
            "segments": seg_entries,
            "tombstones": tombstones,
        })
    log.info("saved index to %s (%d segments, save %d)", root, len(segments), current + 1)
    return current + 1


def read_adapter(path: str | os.PathLike, manifest: dict[str, Any], verify: bool = True) -> dict[str, np.ndarray]:
    """The adapter tensors of the index directory ``path``, whose manifest (checked by
    :func:`~csr_index.manifest.read_manifest`) is ``manifest``. FormatVersionError when the
    encoder's config has fields this release does not know (a newer release wrote it)."""
    root = Path(path)
    adapter_path = checked_file(root, manifest["adapter"], verify)
    try:
        state = st_load(adapter_path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptIndexError(f"{adapter_path} is not a readable safetensors file: {exc}") from exc
    config = manifest["encoder"].get("config")
    unknown = sorted(set(config) - {f.name for f in fields(CSRConfig)}) if isinstance(config, dict) else []
    if unknown:  # a newer release added training settings: say so, rather than "corrupt"
        raise FormatVersionError(
            f"{root} was written by a newer csr-index (it records version {manifest.get('library_version', '?')}); "
            f"this csr-index {__version__} does not know its config fields {unknown}. Upgrade csr-index to read it.")
    return state


def read_segments(path: str | os.PathLike, manifest: dict[str, Any], h: int, d: int,
                  verify: bool = True) -> tuple[list[Segment], list[np.ndarray | None]]:
    """The segments of the index directory ``path`` (codes of width ``h``, originals of ``d``
    dimensions) and their deleted-row masks (uint8, None: no row deleted), as ``manifest``
    lists them. Arrow files are memory-mapped, not copied; ``verify`` checks every file's sha256
    (sizes are always checked)."""
    root = Path(path)
    segments, deleted = [], []
    for seg_meta in manifest["segments"]:
        files = seg_meta.get("files") or {}
        if "codes" not in files:
            raise CorruptIndexError(f"{root}: segment {seg_meta.get('name')!r} lists no codes file")
        tables = {role: _open_table(checked_file(root, entry, verify)) for role, entry in files.items()}
        segments.append(Segment.from_tables(str(seg_meta.get("name")), tables, h, d, manifest["index"], files, root))
        deleted.append(None)
    if manifest.get("tombstones"):
        table = _open_table(checked_file(root, manifest["tombstones"], verify))
        by_name = {seg.name: i for i, seg in enumerate(segments)}
        names, rows = table.column("segment").to_pylist(), table.column("row").to_numpy()
        for name, row in zip(names, rows):
            i = by_name.get(name)
            if i is None or not 0 <= row < segments[i].n:
                raise CorruptIndexError(f"{root}: a tombstone names row {row} of unknown segment {name!r}")
            if deleted[i] is None:
                deleted[i] = np.zeros(segments[i].n, dtype=np.uint8)
            deleted[i][row] = 1
    return segments, deleted
