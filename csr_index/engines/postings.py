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
        return np.ascontiguousarray(values.astype(np.float16, copy=False)).view(np.uint16), LUT
    return np.ascontiguousarray(values, dtype=np.float32), np.empty(0, dtype=np.float32)


@dataclass(frozen=True)
class Postings:
    """For each latent l, the docs where it fires, in doc order: ``docs[indptr[l]:indptr[l + 1]]``
    (int32) with their code values ``vals`` (float32, or float16 bits read through ``lut``).

    ``limit`` prunes statically (Seismic's lambda): each list keeps only its ``limit``
    strongest entries (largest values; ties: lower doc first), still in doc order, so a
    term-at-a-time pass writes its accumulator front to back. Empty slots (value 0) are
    not posted.
    """

    indptr: np.ndarray
    docs: np.ndarray
    vals: np.ndarray
    lut: np.ndarray

    @classmethod
    def build(cls, codes: SparseCodes, values: str = "float32", limit: int | None = None) -> "Postings":
        if codes.n >= 1 << 31:
            raise ValueError(f"at most 2**31 - 1 docs per engine, got {codes.n}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of entries per list or None, got {limit!r}")
        nz = codes.values != 0
        lat = codes.indices[nz].astype(np.int64)
        doc = np.nonzero(nz)[0].astype(np.int32)  # entries come doc by doc
        val = codes.values[nz].astype(np.float32)
        if limit is not None:
            strongest = np.lexsort((doc, -val, lat))  # by list, then value descending, then doc
            counts = np.bincount(lat, minlength=codes.h)
            rank = np.arange(len(lat)) - (np.cumsum(counts) - counts)[lat[strongest]]
            keep = np.sort(strongest[rank < limit])  # back to doc-by-doc order
            lat, doc, val = lat[keep], doc[keep], val[keep]
        perm = np.argsort(lat, kind="stable")  # each list in doc order
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
