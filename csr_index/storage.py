"""On-disk format of an index: one directory, a JSON manifest, safetensors and Arrow IPC files.

Layout of ``index.csr/``::

    manifest.json                     format name/version, encoder and index settings, segments,
                                      every file's size + sha256, next_id (where new ids start),
                                      generation (how many saves wrote this directory)
    adapter.<hash>.safetensors        W, pre_bias, latent_bias, latent_weight (named by content)
    seg-<id>.codes.arrow              one per segment: id int64, indices fixed_size_list<uint16|uint32>[k],
                                      values fixed_size_list<float32|float16>[k], norm float32
                                      (L2 norm of each code's reconstruction), key string (optional)
    seg-<id>.vectors.arrow            vector fixed_size_list<float16>[d] (optional, for re-ranking)
    tombstones.<gen>.arrow            segment string, row int64: deleted rows (only when some are)
    .lock                             held (flock) while a process saves

Segments are immutable, so saving after a small ``add`` writes only the new segment's
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

import fcntl
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from . import __version__
from .errors import CorruptIndexError, FormatVersionError, MissingIndexFileError, StaleIndexError

if TYPE_CHECKING:
    from .encoder import CSREncoder
    from .segment import Segment

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "write_index", "read_index", "read_encoder", "read_manifest",
           "fixed_size_column"]

log = logging.getLogger(__name__)

FORMAT_NAME = "csr-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK = ".lock"
_OWN_FILE = re.compile(r"^(adapter\.[0-9a-f]{12}\.safetensors|seg-[0-9a-f]{12}\.(codes|vectors)\.arrow"
                       r"|tombstones\.[0-9a-f]{12}\.arrow)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_table(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
    _fsync(path)


def _entry(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


@contextmanager
def _writer_lock(root: Path):
    """Exclusive, non-blocking flock on ``root/.lock`` for the duration of a save."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is saving the index at {root}; try again when it is done") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _check_target(root: Path) -> dict[str, Any] | None:
    """The manifest already in ``root`` (None if none); refuse a directory that is not ours."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not an index directory")
    if not root.is_dir() or not any(root.iterdir()):
        return None
    if (root / MANIFEST).exists():
        try:
            old = json.loads((root / MANIFEST).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("format") == FORMAT_NAME:
            if old.get("format_version") != FORMAT_VERSION:
                raise FormatVersionError(
                    f"{root} holds a csr-index index of format version {old.get('format_version')!r} (this "
                    f"csr-index writes {FORMAT_VERSION}); refusing to replace it: save to a new directory")
            return old
    elif all(_OWN_FILE.match(p.name) or p.name in (MANIFEST + ".tmp", LOCK) for p in root.iterdir()):
        return None
    raise FileExistsError(f"{root} is a non-empty directory that is not a csr-index index; refusing to write")


def check_writable(path: str | os.PathLike) -> Path:
    """Raise, before any work, what a save to ``path`` would raise at its end: a target that is
    a file or a foreign directory, an index of another format version, a parent that is a file
    or a directory this process cannot write (PermissionError, NotADirectoryError, FileExistsError)."""
    root = Path(path)
    _check_target(root)
    probe = root if root.exists() else next(p for p in root.absolute().parents if p.exists())
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot create {root}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {root}: {probe} is not writable")
    return root


def _reusable(root: Path, entry: dict[str, Any] | None, old_names: set[str]) -> bool:
    """An entry's file is already in ``root``, named by the previous manifest, at its size."""
    if entry is None or entry["name"] not in old_names:
        return False
    p = root / entry["name"]
    return p.exists() and p.stat().st_size == entry["bytes"]


def _listed(manifest: dict[str, Any] | None) -> set[str]:
    if not manifest:  # (_check_target refuses a manifest of another format version)
        return set()
    names = {manifest.get("adapter", {}).get("name")}
    names |= {e["name"] for seg in manifest.get("segments", []) for e in seg.get("files", {}).values()}
    if manifest.get("tombstones"):
        names.add(manifest["tombstones"]["name"])
    return {n for n in names if n}


def write_index(
    path: str | os.PathLike,
    encoder: "CSREncoder",
    settings: dict[str, Any],
    segments: Sequence["Segment"],
    deleted: Sequence[np.ndarray | None],
    next_id: int = 0,
    replace_documents: bool = True,
    generation: int | None = None,
) -> int:
    """Write an encoder, its index ``settings`` and ``segments`` (with ``deleted`` row masks,
    one per segment, and ``next_id``, where new ids start) to the directory ``path``,
    atomically (see the module docstring). Without ``replace_documents``, a ``path`` that holds
    documents is refused (FileExistsError) instead of replaced. ``generation``: the save count of
    ``path`` when the caller loaded or last saved it; if the directory has been saved since (by
    another handle or process), StaleIndexError instead of losing that save's rows. Returns the
    new save count (the manifest's ``generation``)."""
    root = Path(path)
    _check_target(root)  # before creating anything
    root.mkdir(parents=True, exist_ok=True)
    with _writer_lock(root):
        old = _check_target(root)  # again, under the lock: what is there now
        held = old.get("ntotal", 0) if old is not None and old.get("segments") else 0
        if held and not replace_documents:
            raise FileExistsError(f"{root} holds an index of {held} documents, which this save would replace; "
                                  "save to another directory, or pass overwrite=True to replace them")
        current = manifest_generation(old)
        if generation is not None and old is not None and current != generation:
            raise StaleIndexError(
                f"{root} was saved by another handle or process (save {current}) after this one loaded or last "
                f"saved it (save {generation}); saving would drop those rows. Load it again and re-apply your "
                "changes, or save this index to another directory")
        old_names = _listed(old)
        blob = st_save({k: np.ascontiguousarray(v) for k, v in encoder.state().items()})
        digest = hashlib.sha256(blob).hexdigest()
        adapter = root / f"adapter.{digest[:12]}.safetensors"
        if not (adapter.name in old_names and adapter.exists() and _sha256(adapter) == digest):
            _write_bytes(adapter, blob)  # (a reused file is checked: a damaged one is rewritten)
        seg_entries = []
        for seg in segments:
            if not all(_reusable(root, seg.files.get(role), old_names) for role in seg.roles()):
                seg.files = {}
                for role, table in seg.tables().items():
                    target = root / f"seg-{seg.name}.{role}.arrow"
                    _write_table(target, table)
                    seg.files[role] = _entry(target)
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
            tombstones = _entry(target)
        _fsync(root)  # the new files' directory entries are durable before the manifest names them
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "encoder": encoder.meta(),
            "index": dict(settings),
            "ntotal": int(sum(seg.n for seg in segments) - sum(len(rows) for _, rows in dead)),
            "next_id": int(next_id),
            "generation": current + 1,
            "adapter": {"name": adapter.name, "bytes": len(blob), "sha256": digest},
            "segments": seg_entries,
            "tombstones": tombstones,
        }
        tmp = root / (MANIFEST + ".tmp")
        _write_bytes(tmp, json.dumps(manifest, indent=2, sort_keys=True).encode())
        os.replace(tmp, root / MANIFEST)
        _fsync(root)
        keep = _listed(manifest)
        for p in root.iterdir():
            if _OWN_FILE.match(p.name) and p.name not in keep:
                p.unlink()
    log.info("saved index to %s (%d segments, save %d)", root, len(segments), current + 1)
    return current + 1


def manifest_generation(manifest: dict[str, Any] | None) -> int:
    """How many saves wrote a manifest (0: none, or one from before save counts were kept)."""
    value = manifest.get("generation", 0) if manifest is not None else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the manifest of an index directory without loading any data."""
    root = Path(path)
    if not root.is_dir():
        raise MissingIndexFileError(f"no index directory at {root}")
    mpath = root / MANIFEST
    if not mpath.exists():
        raise MissingIndexFileError(f"{root} has no {MANIFEST}: not a csr-index index, or never saved")
    try:
        manifest = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptIndexError(f"{mpath} is not valid JSON ({exc}); the index is corrupt") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorruptIndexError(f"{mpath} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{root} uses format version {version!r}; this csr-index reads version {FORMAT_VERSION}. "
            "Rebuild the index or use the csr-index release that wrote it."
        )
    for key, kind in (("encoder", dict), ("index", dict), ("segments", list)):
        if not isinstance(manifest.get(key), kind):
            raise CorruptIndexError(f"{mpath} lacks its {key!r} section")
    if not all(isinstance(s, dict) and isinstance(s.get("files"), dict) for s in manifest["segments"]):
        raise CorruptIndexError(f"{mpath}: every segment must be an object with a 'files' object")
    entries = [manifest.get("adapter")] + [e for s in manifest["segments"] for e in s["files"].values()]
    if manifest.get("tombstones") is not None:
        entries.append(manifest["tombstones"])
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and _OWN_FILE.match(entry["name"])):
            raise CorruptIndexError(f"{mpath}: bad file entry {entry!r}")
    next_id = manifest.setdefault("next_id", 0)  # older saves lack it: new ids then follow the largest stored
    if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < 0:
        raise CorruptIndexError(f"{mpath}: next_id must be a non-negative integer, got {next_id!r}")
    return manifest


def _checked_file(root: Path, entry: dict[str, Any], verify: bool) -> Path:
    p = root / entry["name"]
    if not p.exists():
        raise MissingIndexFileError(f"{p} is missing (listed in {root / MANIFEST})")
    size = p.stat().st_size
    if size != entry.get("bytes"):
        raise CorruptIndexError(f"{p} has {size} bytes, the manifest says {entry.get('bytes')}: truncated or altered")
    if verify and _sha256(p) != entry.get("sha256"):
        raise CorruptIndexError(f"{p} does not match its sha256 checksum: the file is corrupt")
    return p


def _open_table(p: Path) -> pa.Table:
    try:
        return pa.ipc.open_file(pa.memory_map(str(p), "r")).read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise CorruptIndexError(f"{p} is not a readable Arrow IPC file: {exc}") from exc


def _encoder(root: Path, manifest: dict[str, Any], verify: bool, progress: bool) -> "CSREncoder":
    from .config import CSRConfig
    from .encoder import CSREncoder

    adapter_path = _checked_file(root, manifest["adapter"], verify)
    try:
        state = st_load(adapter_path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptIndexError(f"{adapter_path} is not a readable safetensors file: {exc}") from exc
    config = manifest["encoder"].get("config") if isinstance(manifest["encoder"], dict) else None
    unknown = sorted(set(config) - {f.name for f in fields(CSRConfig)}) if isinstance(config, dict) else []
    if unknown:  # a newer release added training settings: say so, rather than "corrupt"
        raise FormatVersionError(
            f"{root} was written by a newer csr-index (it records version {manifest.get('library_version', '?')}); "
            f"this csr-index {__version__} does not know its config fields {unknown}. Upgrade csr-index to read it.")
    try:
        return CSREncoder.from_state(manifest["encoder"], state, progress=progress)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptIndexError(f"the encoder of {root} is incomplete or invalid: {exc}") from exc


def read_encoder(path: str | os.PathLike, verify: bool = True, progress: bool = False) -> "CSREncoder":
    """The encoder (adapter, metric, config) of an index directory, without its documents."""
    root = Path(path)
    return _encoder(root, read_manifest(root), verify, progress)


def read_index(path: str | os.PathLike, verify: bool = True, progress: bool = False):
    """Load an index directory: (manifest, encoder, segments, deleted masks).

    Arrow files are memory-mapped, not copied; ``verify`` checks every file's sha256
    (sizes are always checked).
    """
    from .segment import Segment

    root = Path(path)
    manifest = read_manifest(root)
    encoder = _encoder(root, manifest, verify, progress)
    settings = manifest["index"]
    segments, deleted = [], []
    for seg_meta in manifest["segments"]:
        files = seg_meta.get("files") or {}
        if "codes" not in files:
            raise CorruptIndexError(f"{root}: segment {seg_meta.get('name')!r} lists no codes file")
        tables = {role: _open_table(_checked_file(root, entry, verify)) for role, entry in files.items()}
        segments.append(Segment.from_tables(str(seg_meta.get("name")), tables, encoder, settings, files, root))
        deleted.append(None)
    if manifest.get("tombstones"):
        table = _open_table(_checked_file(root, manifest["tombstones"], verify))
        by_name = {seg.name: i for i, seg in enumerate(segments)}
        names, rows = table.column("segment").to_pylist(), table.column("row").to_numpy()
        for name, row in zip(names, rows):
            i = by_name.get(name)
            if i is None or not 0 <= row < segments[i].n:
                raise CorruptIndexError(f"{root}: a tombstone names row {row} of unknown segment {name!r}")
            if deleted[i] is None:
                deleted[i] = np.zeros(segments[i].n, dtype=np.uint8)
            deleted[i][row] = 1
    return manifest, encoder, segments, deleted


def fixed_size_column(table: pa.Table, name: str, dtype: Any) -> np.ndarray:
    """A fixed_size_list column as an (n, width) numpy array; zero-copy for a single chunk."""
    if name not in table.column_names:
        raise CorruptIndexError(f"Arrow table lacks the column {name!r} (has {table.column_names})")
    col = table.column(name)
    if not pa.types.is_fixed_size_list(col.type) or col.type.value_type != pa.from_numpy_dtype(np.dtype(dtype)):
        raise CorruptIndexError(f"column {name!r} has type {col.type}, expected fixed_size_list<{np.dtype(dtype)}>")
    width = col.type.list_size
    chunks = [c.values.to_numpy(zero_copy_only=True).reshape(-1, width) for c in col.chunks if len(c)]
    if not chunks:
        return np.empty((0, width), dtype=dtype)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
