"""The one place where user-supplied arrays are checked.

Every public entry point funnels its input through these helpers, so a wrong
shape or a NaN is reported the same way everywhere, before any state changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_matrix", "as_ids", "as_int64", "check_positive", "sample_rows", "INT64_MAX"]


def as_matrix(x: Any, d: int | None = None, name: str = "x") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 array of shape (n, d).

    Raises ``ValueError`` for non-2-D input, an empty batch, the wrong number of
    columns, non-numeric data, or NaN/inf values; ``TypeError`` for non-arrays.
    """
    if hasattr(x, "detach"):  # torch tensors
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be a 2-D array of floats, got {type(x).__name__}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (reshape a single vector with x.reshape(1, -1))" if arr.ndim == 1 else ""
        raise ValueError(f"Expected a 2-D array {name} of shape (n, d), got {arr.ndim}-D shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape}); pass at least one vector")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, expected {d} (shape {arr.shape}, expected (n, {d}))")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:  # memory-mapped or Arrow-backed input; torch needs writable memory
        arr = arr.copy()
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} contains NaN or inf values (first at row {bad[0]}, column {bad[1]}); "
            "clean or drop those vectors first"
        )
    return arr


INT64_MAX = np.iinfo(np.int64).max


def as_int64(ids: Any, name: str = "ids") -> np.ndarray:
    """``ids`` as an int64 array of the same shape: integers, or floats with integral values,
    within int64's range (``TypeError`` / ``ValueError`` otherwise, never a silent wrap or cut)."""
    arr = np.asarray(ids)
    if not arr.size:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise TypeError(f"{name} must be integers (int64), got non-integral {arr.dtype} values")
        if arr.max() >= 2.0**63 or arr.min() < -(2.0**63):
            raise ValueError(f"{name} must fit in int64, got {arr.max():.4g}")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers (int64), got dtype {arr.dtype}")
    elif np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {int(arr.max())}")
    return arr.astype(np.int64)


def as_ids(ids: Any, n: int, name: str = "ids") -> np.ndarray:
    """Return ``ids`` as an int64 array of length ``n``: integral, non-negative, unique."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} vectors")
    arr = as_int64(arr, name)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative (-1 marks 'no result'); got {int(arr.min())}")
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        dup = uniq[counts > 1][:5].tolist()
        raise ValueError(f"{name} contains duplicates, e.g. {dup}")
    return arr


def check_positive(value: Any, name: str, maximum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an int with 1 <= value <= ``maximum`` (``None`` passes when ``allow_none``).

    ``TypeError`` for a non-integer (bools included), ``ValueError`` when out of range.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} exceeds the maximum of {maximum}")
    return int(value)


def sample_rows(n: int, m: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted row numbers of a random sample of ``m`` of ``n`` rows (without replacement), or None
    when every row is kept (``m`` None or ``n <= m``)."""
    return None if m is None or n <= m else np.sort(rng.choice(n, m, replace=False))
