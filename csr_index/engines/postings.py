"""Posting lists (the inverted index) and the forward index of stored codes, as flat arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codes import SparseCodes
from .kernels import LUT

__all__ = ["Postings", "ForwardIndex", "VALUE_TYPES"]

VALUE_TYPES = ("float32", "float16")


def _encode_values(values: np.ndarray, value_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Values as the kernels read them, with their lookup table (empty = plain float32)."""
    if value_type not in VALUE_TYPES:
        raise ValueError(f"values must be one of {VALUE_TYPES}, got {value_type!r}")
    if value_type == "float16":
        return np.ascontiguousarray(values.astype(np.float16)).view(np.uint16), LUT
    return np.ascontiguousarray(values, dtype=np.float32), np.empty(0, dtype=np.float32)


@dataclass(frozen=True)
class Postings:
    """For each latent l, the docs where it fires: ``docs[indptr[l]:indptr[l + 1]]`` (int32)
    with their code values ``vals`` (float32, or float16 bits read through ``lut``).

    ``order="doc"`` keeps each list in doc order (best memory locality for exact scoring);
    ``order="value"`` sorts each list by decreasing value, so its first ``limit`` entries
    are the list statically pruned to its ``limit`` strongest docs (Seismic's lambda).
    Empty slots (value 0) are not posted.
    """

    indptr: np.ndarray
    docs: np.ndarray
    vals: np.ndarray
    lut: np.ndarray

    @classmethod
    def build(cls, codes: SparseCodes, order: str = "doc", values: str = "float32") -> "Postings":
        if order not in ("doc", "value"):
            raise ValueError(f"order must be 'doc' or 'value', got {order!r}")
        if codes.n >= 1 << 31:
            raise ValueError(f"at most 2**31 - 1 docs per engine, got {codes.n}")
        nz = codes.values != 0
        lat = codes.indices[nz].astype(np.int64)
        doc = np.nonzero(nz)[0].astype(np.int32)
        val = codes.values[nz].astype(np.float32)
        if order == "doc":
            perm = np.argsort(lat, kind="stable")  # rows are visited in doc order already
        else:
            perm = np.lexsort((-val, lat))
        indptr = np.zeros(codes.h + 1, dtype=np.int64)
        np.cumsum(np.bincount(lat, minlength=codes.h), out=indptr[1:])
        vals, lut = _encode_values(val[perm], values)
        return cls(indptr, np.ascontiguousarray(doc[perm]), vals, lut)

    @property
    def lengths(self) -> np.ndarray:
        """Entries per latent (h,)."""
        return np.diff(self.indptr)

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.docs.nbytes + self.vals.nbytes)


@dataclass(frozen=True)
class ForwardIndex:
    """Each doc's code as stored: latent ids ``idx`` (n, k) uint16/uint32 and values ``vals``
    (n, k) float32 or float16 bits read through ``lut``; an empty slot has value 0."""

    idx: np.ndarray
    vals: np.ndarray
    lut: np.ndarray

    @classmethod
    def build(cls, codes: SparseCodes, values: str = "float32") -> "ForwardIndex":
        vals, lut = _encode_values(codes.values, values)
        return cls(np.ascontiguousarray(codes.indices), vals, lut)

    @property
    def nbytes(self) -> int:
        return int(self.idx.nbytes + self.vals.nbytes)
