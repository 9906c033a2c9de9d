"""What an index holds: memory per vector by part, and how selective its codes are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .codes import index_dtype

if TYPE_CHECKING:
    from .encoder import CSREncoder
    from .segment import EngineSpec
    from .store import Snapshot

__all__ = ["index_stats", "latent_usage"]


def latent_usage(snap: "Snapshot", h: int) -> np.ndarray:
    """Live documents in which each latent is active (h,), int64: the length of its posting list."""
    counts = np.zeros(h, dtype=np.int64)
    for seg, dead in zip(snap.segments, snap.deleted):
        active = seg.codes.values > 0
        if dead is not None:
            active &= (dead == 0)[:, None]
        counts += np.bincount(seg.codes.indices[active].astype(np.int64), minlength=h)
    return counts


def index_stats(snap: "Snapshot", spec: "EngineSpec", encoder: "CSREncoder", *, k_doc: int, store_vectors: bool,
                values_dtype: np.dtype, vectors_dtype: np.dtype = np.dtype("float16")) -> dict[str, Any]:
    """Settings, counts, memory per live vector (codes, ids, norms, originals — int8 ones with their
    float32 scales —, keys, and the posting lists of the engine ``spec`` searches with, built if not
    yet) and latent usage (busiest latent's share of documents) of an index: the segments ``snap``,
    stored as ``encoder``, ``k_doc``, ``store_vectors``, ``values_dtype`` and ``vectors_dtype`` say."""
    n = snap.ntotal
    parts: dict[str, int] = {}
    for seg in snap.segments:
        for name, nbytes in seg.nbytes(spec).items():
            parts[name] = parts.get(name, 0) + nbytes
    indices_dtype = index_dtype(encoder.h)
    out: dict[str, Any] = {
        "d": encoder.d, "h": encoder.h, "k": encoder.k, "k_doc": k_doc, "metric": encoder.metric,
        "ntotal": n, "segments": len(snap.segments), "deleted_rows": sum(s.n for s in snap.segments) - n,
        "is_trained": encoder.is_trained, "store_vectors": store_vectors, "vectors_dtype": str(vectors_dtype),
        "indices_dtype": str(indices_dtype),
        "values_dtype": str(values_dtype),
        "code_bytes_per_vector": k_doc * (indices_dtype.itemsize + values_dtype.itemsize),
        "dense_float32_bytes_per_vector": 4 * encoder.d,
    }
    if n:
        out["memory_bytes_per_vector"] = round(sum(parts.values()) / n, 1)
        out.update({f"memory_{name}_bytes_per_vector": round(b / n, 1) for name, b in parts.items() if b})
        counts = latent_usage(snap, encoder.h)
        out["mean_nonzeros_per_code"] = round(float(counts.sum() / n), 2)
        out["latents_unused_by_stored_codes"] = int((counts == 0).sum())
        out["busiest_latent_doc_fraction"] = round(float(counts.max() / n), 4)
    out.update({f"train_{k}": v for k, v in encoder.train_stats.items()})
    return out
