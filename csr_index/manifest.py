"""The manifest of an index directory, and the rules for replacing it safely.

``manifest.json`` names the format and its version, the encoder and index settings, and every
data file with its size and sha256 (see :mod:`csr_index.storage` for the layout). This module
reads and checks it, decides whether a directory may be written (a foreign directory, another
format version, another index's documents, a save made since this handle's are refused), holds
the writer lock, and commits a new manifest durably: its files' directory entries are fsynced
first, the manifest is written to a temporary file, fsynced, swapped in with ``os.replace``,
and the directory fsynced again, so a crash at any moment leaves the old or the new manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CorruptIndexError, FormatVersionError, MissingIndexFileError, StaleIndexError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "OWN_FILE", "read_manifest", "manifest_generation",
           "check_writable", "existing_manifest", "check_replace", "listed_files", "checked_file", "writer_lock",
           "commit", "sha256_of", "fsync", "write_bytes", "file_entry"]

log = logging.getLogger(__name__)

FORMAT_NAME = "csr-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK = ".lock"
OWN_FILE = re.compile(r"^(adapter\.[0-9a-f]{12}\.safetensors|seg-[0-9a-f]{12}\.(codes|vectors)\.arrow"
                      r"|tombstones\.[0-9a-f]{12}\.arrow)$")
"""Names of the data files an index directory may hold (and a save may delete once unlisted)."""


# ------------------------------------------------------------ durable files
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """fsync a file or a directory (a directory: the entries of files created in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def file_entry(path: Path) -> dict[str, Any]:
    """What the manifest records of a data file: name, size, sha256."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def checked_file(root: Path, entry: dict[str, Any], verify: bool) -> Path:
    """The data file a manifest ``entry`` names, its size (and with ``verify`` its sha256) checked."""
    p = root / entry["name"]
    if not p.exists():
        raise MissingIndexFileError(f"{p} is missing (listed in {root / MANIFEST})")
    size = p.stat().st_size
    if size != entry.get("bytes"):
        raise CorruptIndexError(f"{p} has {size} bytes, the manifest says {entry.get('bytes')}: truncated or altered")
    if verify and sha256_of(p) != entry.get("sha256"):
        raise CorruptIndexError(f"{p} does not match its sha256 checksum: the file is corrupt")
    return p


# ------------------------------------------------------------------ reading
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
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and OWN_FILE.match(entry["name"])):
            raise CorruptIndexError(f"{mpath}: bad file entry {entry!r}")
    next_id = manifest.setdefault("next_id", 0)  # older saves lack it: new ids then follow the largest stored
    if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < 0:
        raise CorruptIndexError(f"{mpath}: next_id must be a non-negative integer, got {next_id!r}")
    return manifest


def manifest_generation(manifest: dict[str, Any] | None) -> int:
    """How many saves wrote a manifest (0: none, or one from before save counts were kept)."""
    value = manifest.get("generation", 0) if manifest is not None else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def listed_files(manifest: dict[str, Any] | None) -> set[str]:
    """The data files a manifest names."""
    if not manifest:  # (existing_manifest refuses a manifest of another format version)
        return set()
    names = {manifest.get("adapter", {}).get("name")}
    names |= {e["name"] for seg in manifest.get("segments", []) for e in seg.get("files", {}).values()}
    if manifest.get("tombstones"):
        names.add(manifest["tombstones"]["name"])
    return {n for n in names if n}


# --------------------------------------------------------- may it be written
def existing_manifest(root: Path) -> dict[str, Any] | None:
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
    elif all(OWN_FILE.match(p.name) or p.name in (MANIFEST + ".tmp", LOCK) for p in root.iterdir()):
        return None
    raise FileExistsError(f"{root} is a non-empty directory that is not a csr-index index; refusing to write")


def check_writable(path: str | os.PathLike) -> Path:
    """Raise, before any work, what a save to ``path`` would raise at its end: a target that is
    a file or a foreign directory, an index of another format version, a parent that is a file
    or a directory this process cannot write (PermissionError, NotADirectoryError, FileExistsError)."""
    root = Path(path)
    existing_manifest(root)
    probe = root if root.exists() else next(p for p in root.absolute().parents if p.exists())
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot create {root}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {root}: {probe} is not writable")
    return root


def check_replace(root: Path, old: dict[str, Any] | None, replace_documents: bool, generation: int | None) -> int:
    """Whether a save may replace ``old``, the manifest in ``root``: FileExistsError when it holds
    documents and not ``replace_documents``; StaleIndexError when ``generation`` (the save count
    the caller last saw, None: unknown) is not its save count. Returns that save count."""
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
    return current


# ----------------------------------------------------------------- writing
def _lock(fd: int, root: Path) -> Callable[[], None]:
    """Lock the open file ``fd`` exclusively without waiting; returns what unlocks it. ``flock``
    where there is fcntl (POSIX), ``msvcrt.locking`` on Windows; on a platform with neither, no
    lock and a logged warning. RuntimeError when another process holds the lock."""
    busy = f"another process is saving the index at {root}; try again when it is done"
    try:
        import fcntl  # POSIX only: imported here, so that the package imports on every platform
    except ImportError:
        pass
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(busy) from None
        return lambda: None  # closing the descriptor releases a flock
    try:
        import msvcrt
    except ImportError:
        log.warning("no file locking on this platform (neither fcntl nor msvcrt): saving %s without the writer "
                    "lock, so two processes saving it at the same time could lose one's changes", root)
        return lambda: None
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # the first byte of the file (which need not exist)
    except OSError:
        raise RuntimeError(busy) from None

    def unlock() -> None:
        os.lseek(fd, 0, os.SEEK_SET)  # msvcrt.locking counts from the current position
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    return unlock


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``root/.lock`` (see :func:`_lock`) for the duration of a save."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        unlock = _lock(fd, root)
        try:
            yield
        finally:
            unlock()
    finally:
        os.close(fd)


def commit(root: Path, manifest: dict[str, Any]) -> None:
    """Make ``manifest`` the manifest of ``root`` atomically and durably, then delete the data
    files it no longer names. Call it under :func:`writer_lock`, the files it names written."""
    fsync(root)  # the new files' directory entries are durable before the manifest names them
    tmp = root / (MANIFEST + ".tmp")
    write_bytes(tmp, json.dumps(manifest, indent=2, sort_keys=True).encode())
    os.replace(tmp, root / MANIFEST)
    fsync(root)
    keep = listed_files(manifest)
    for p in root.iterdir():
        if OWN_FILE.match(p.name) and p.name not in keep:
            p.unlink()
