"""On-disk format of an index: one directory, a JSON manifest, safetensors and Arrow IPC files.

Layout of ``index.csr/``::

    manifest.json                  format name/version, config, counts, dtypes, file sizes + sha256
    adapter.<gen>.safetensors      W, pre_bias, latent_bias
    codes.<gen>.arrow              id int64, indices fixed_size_list<uint16|uint32>[k],
                                   values fixed_size_list<float32|float16>[k], recon_norm float32,
                                   key string (optional)
    vectors.<gen>.arrow            vector fixed_size_list<float16>[d] (optional, for re-ranking)

Saving is atomic: data files get a fresh generation tag and are fsynced before
``manifest.json`` is replaced with ``os.replace``; files of older generations are
deleted only after that. A crash at any moment leaves either the old or the new
manifest, and every file it names, on disk. Loading never runs code from the files
(JSON, safetensors and Arrow only) and checks sizes and checksums before trusting them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .errors import CorruptIndexError, FormatVersionError, MissingIndexFileError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "IndexFiles", "write_index", "read_index", "read_manifest"]

log = logging.getLogger(__name__)

FORMAT_NAME = "csr-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_OWN_FILE = re.compile(r"^(adapter|codes|vectors)\.[0-9a-f]{12}\.(safetensors|arrow)$")


@dataclass
class IndexFiles:
    """Everything an index directory holds, in memory (arrays may be memory-mapped views)."""

    meta: dict[str, Any]
    adapter: dict[str, np.ndarray]
    codes: pa.Table
    vectors: np.ndarray | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
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
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def vectors_table(vectors: np.ndarray) -> pa.Table:
    """The Arrow table of stored originals: one ``vector`` fixed_size_list<float16>[d] column."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float16).ravel())
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def write_index(path: str | os.PathLike, files: IndexFiles) -> Path:
    """Write ``files`` to the directory ``path`` atomically (see module docstring)."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not an index directory")
    if root.is_dir() and any(root.iterdir()):
        if (root / MANIFEST).exists():
            try:
                is_ours = json.loads((root / MANIFEST).read_text()).get("format") == FORMAT_NAME
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                is_ours = False
        else:
            is_ours = all(_OWN_FILE.match(p.name) or p.name == MANIFEST + ".tmp" for p in root.iterdir())
        if not is_ours:
            raise FileExistsError(f"{root} is a non-empty directory that is not a csr-index index; refusing to write")
    root.mkdir(parents=True, exist_ok=True)
    gen = uuid.uuid4().hex[:12]
    entries: dict[str, dict[str, Any]] = {}

    def record(role: str, name: str) -> None:
        p = root / name
        entries[role] = {"name": name, "bytes": p.stat().st_size, "sha256": _sha256(p)}

    name = f"adapter.{gen}.safetensors"
    _write_bytes(root / name, st_save({k: np.ascontiguousarray(v) for k, v in files.adapter.items()}))
    record("adapter", name)
    name = f"codes.{gen}.arrow"
    _write_table(root / name, files.codes)
    record("codes", name)
    if files.vectors is not None:
        name = f"vectors.{gen}.arrow"
        _write_table(root / name, vectors_table(files.vectors))
        record("vectors", name)

    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **files.meta, "files": entries}
    tmp = root / (MANIFEST + ".tmp")
    _write_bytes(tmp, json.dumps(manifest, indent=2, sort_keys=True).encode())
    os.replace(tmp, root / MANIFEST)
    _fsync_dir(root)
    keep = {e["name"] for e in entries.values()}
    for p in root.iterdir():
        if _OWN_FILE.match(p.name) and p.name not in keep:
            p.unlink()
    log.info("saved index to %s (%d files, generation %s)", root, len(entries), gen)
    return root


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
    files = manifest.get("files")
    if not isinstance(files, dict) or "adapter" not in files or "codes" not in files:
        raise CorruptIndexError(f"{mpath} does not list the adapter and codes files")
    for role, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and _OWN_FILE.match(entry["name"])):
            raise CorruptIndexError(f"{mpath}: bad entry for {role!r}: {entry!r}")
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


def read_index(path: str | os.PathLike, verify: bool = True) -> IndexFiles:
    """Load an index directory; Arrow files are memory-mapped, not copied.

    ``verify`` checks every file's sha256 (sizes are always checked).
    """
    root = Path(path)
    manifest = read_manifest(root)
    files = manifest.pop("files")
    adapter_path = _checked_file(root, files["adapter"], verify)
    try:
        adapter = st_load(adapter_path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptIndexError(f"{adapter_path} is not a readable safetensors file: {exc}") from exc
    codes = _open_table(_checked_file(root, files["codes"], verify))
    vectors = None
    if "vectors" in files:
        table = _open_table(_checked_file(root, files["vectors"], verify))
        vectors = fixed_size_column(table, "vector", np.float16)
    for key in ("format", "format_version"):
        manifest.pop(key)
    return IndexFiles(meta=manifest, adapter=adapter, codes=codes, vectors=vectors)


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
