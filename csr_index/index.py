"""CSRIndex: a FAISS-shaped facade over the encoder, the segment store, the scoring modes, the
searcher and the storage format (README, "Architecture", says which module owns what)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .clusters import CLUSTER_ROWS
from .codes import SparseCodes, index_dtype
from .config import CSRConfig
from .encoder import CSREncoder
from .engines import engine_options
from .errors import CorruptIndexError, IndexFormatError
from .manifest import manifest_generation, read_manifest
from .scoring import SCORES, default_rerank
from .searcher import first_occurrences, rescore_codes, rescore_exact, search_codes, search_exact
from .segment import VECTORS_DTYPES, Segment, store_originals
from .st_model import encoder_from_sentence_transformers
from .stats import index_stats
from .storage import read_segments, write_index
from .store import RowStore
from .validation import as_ids, as_int64, as_matrix, check_positive

__all__ = ["CSRIndex"]

log = logging.getLogger(__name__)


class CSRIndex:
    """Dense vectors in, k-sparse codes stored, searched by a sparse shortlist and exact re-rank.

    >>> index = CSRIndex(d=384)              # k = 32, h = 4 * d, originals kept for re-ranking
    >>> index.train(xb); index.add(xb)
    >>> D, I = index.search(xq, 10)          # float32 (nq, 10), int64 (nq, 10), -1 = no result

    ``k`` / ``h``: latents per code and code width (default 32 and 4 * d; or in ``config``,
    not differently in both). ``k_doc``: latents per *stored* code (default ``k``).
    ``metric``: ``"cosine"`` (vectors L2-normalised) or ``"ip"``. ``store_vectors``: keep
    the originals so search re-ranks its shortlist exactly (default True), as ``vectors_dtype``
    ``"int8"`` (the default: one float32 scale per vector, symmetric per-vector quantisation, 388
    bytes at d = 384; exact scores are the dequantised vectors') or ``"float16"`` (768 bytes; on
    pypi-100k recall@10 0.972 instead of int8's 0.966, SciFact NDCG@10 0.6451 for both).
    ``values_dtype``: stored code values, float32 or float16. ``cluster_rows``: order the rows of
    merged segments of 262,144 rows or more by cluster, about this many rows each (default 1024,
    measured in ``benchmarks/clustered.py``; None: off), so the shortlist reads only each query's
    nearest clusters (see :mod:`csr_index.clusters`). ``engine``: see :meth:`set_engine`.
    Searches are safe from many threads while one thread adds, removes or saves: each search
    reads one snapshot of the segments.
    """

    def __init__(self, d: int, k: int | None = None, h: int | None = None, *, k_doc: int | None = None,
                 metric: str = "cosine", store_vectors: bool = True, values_dtype: str = "float16",
                 vectors_dtype: str = "int8", config: CSRConfig | None = None, progress: bool = False,
                 engine: str = "auto", cluster_rows: int | None = CLUSTER_ROWS) -> None:
        self.encoder = CSREncoder(d, k, h, metric=metric, config=config, progress=progress)
        self._k_doc = self.k if k_doc is None else check_positive(k_doc, "k_doc", self.k)
        for name, value, allowed in (("values_dtype", values_dtype, ("float32", "float16")),
                                     ("vectors_dtype", vectors_dtype, VECTORS_DTYPES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.store_vectors = bool(store_vectors)
        self.values_dtype, self.vectors_dtype = np.dtype(values_dtype), np.dtype(vectors_dtype)
        self._store = RowStore()
        self.cluster_rows = cluster_rows
        self._saves: dict[str, int] = {}  # index directory -> its save count when this handle last loaded/saved it
        self.set_engine(engine)

    @classmethod
    def from_encoder(cls, encoder: CSREncoder, **settings: Any) -> "CSRIndex":
        """An empty index around a trained ``encoder`` (``settings``: k_doc, store_vectors, ...)."""
        index = cls(encoder.d, encoder.k, encoder.h, metric=encoder.metric, config=encoder.config,
                    progress=encoder.progress, **settings)
        index.encoder = encoder
        return index

    # ------------------------------------------------------------------ state
    d = property(lambda self: self.encoder.d)
    h = property(lambda self: self.encoder.h)
    k = property(lambda self: self.encoder.k)
    metric = property(lambda self: self.encoder.metric)
    config = property(lambda self: self.encoder.config)
    adapter = property(lambda self: self.encoder.adapter, doc="The trained SparseAdapter (None before train).")
    train_stats = property(lambda self: self.encoder.train_stats)
    is_trained = property(lambda self: self.encoder.is_trained)
    ntotal = property(lambda self: self._store.snapshot.ntotal, doc="Number of live stored vectors.")

    @property
    def cluster_rows(self) -> int | None:
        """Rows per cluster of merged segments of 262,144 rows or more (None: off). Settable: later
        merges follow it, and :meth:`compact` clusters one big unclustered segment (an index saved
        before clustering, loaded); segments already clustered keep their clusters until merged."""
        return self._store.cluster_rows

    @cluster_rows.setter
    def cluster_rows(self, value: int | None) -> None:
        self._store.cluster_rows = check_positive(value, "cluster_rows", allow_none=True)

    @property
    def k_doc(self) -> int:
        """Active latents per stored code; settable while the index is empty."""
        return self._k_doc

    @k_doc.setter
    def k_doc(self, value: int) -> None:
        if self.ntotal:
            raise ValueError(f"k_doc can only change while the index is empty (it holds {self.ntotal}); call reset() first")
        self._k_doc = check_positive(value, "k_doc", self.k)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (f"CSRIndex(d={self.d}, h={self.h}, k={self.k}, k_doc={self.k_doc}, metric={self.metric!r}, "
                f"ntotal={self.ntotal}, is_trained={self.is_trained})")

    # --------------------------------------------------------------- training
    def train(self, x: Any, pairs: tuple[Any, Any] | None = None) -> "CSRIndex":
        """Fit the sparse adapter on vectors ``x`` (n, d) (see :meth:`CSREncoder.fit`); returns ``self``.
        Re-training would invalidate stored codes, so the index must be empty."""
        if self.ntotal:
            raise ValueError(f"the index already holds {self.ntotal} vectors; call reset() before re-training")
        self.encoder.fit(x, pairs, idf_k=self.k_doc)
        return self

    # the encoder's verbs, on the index as on a FAISS index (see CSREncoder for each)
    prepare = property(lambda self: self.encoder.prepare, doc="Validate and normalise vectors (CSREncoder.prepare).")
    encode = property(lambda self: self.encoder.encode, doc="k-sparse codes of vectors (CSREncoder.encode).")
    decode = property(lambda self: self.encoder.decode, doc="Dense vectors from codes (CSREncoder.decode).")
    query_code_vectors = property(lambda self: self.encoder.query_code_vectors,
                                  doc="Query codes as code x code scoring sees them (CSREncoder.query_code_vectors).")

    # ------------------------------------------------------------ add / remove
    def add(self, x: Any, keys: Sequence[str] | None = None) -> None:
        """Encode and store vectors ``x`` (n, d) under the ids after the largest ever added (removed
        ones included, so a removed id is never given out again; ``ntotal ..`` when nothing was removed
        or failed). Safe from several threads: each call reserves its ids under the store's lock."""
        self.encoder.require_trained()
        n = as_matrix(x, self.d).shape[0]
        start = self._store.reserve(n)
        self.add_with_ids(x, np.arange(start, start + n, dtype=np.int64), keys=keys)

    def add_with_ids(self, x: Any, ids: Any, keys: Sequence[str] | None = None, *, upsert: bool = False) -> None:
        """Encode and store vectors ``x`` (n, d) under int64 ``ids`` (unique, >= 0), with optional
        string ``keys``. An id already stored is an error unless ``upsert``, which replaces it."""
        self.encoder.require_trained()
        xs = self.prepare(x)
        new_ids = as_ids(ids, len(xs))
        if keys is not None and len(keys) != len(xs):
            raise ValueError(f"keys has {len(keys)} entries but there are {len(xs)} vectors")
        vectors, scales = store_originals(xs, str(self.vectors_dtype)) if self.store_vectors else (None, None)
        codes, norms = self.encoder.encode_prepared(xs, self.k_doc)
        if self.values_dtype == np.float16 and codes.values.size and codes.values.max() > np.finfo(np.float16).max:
            raise ValueError(f"code values up to {codes.values.max():.3g} overflow float16 (max 65504); "
                             "use values_dtype='float32' or normalise the vectors")
        codes = SparseCodes(codes.indices, codes.values.astype(self.values_dtype), self.h)
        keys = pa.array([str(k) for k in keys], type=pa.string()) if keys is not None else None
        segment = Segment(new_ids, codes, norms, vectors, keys, scales=scales)
        replaced = self._store.add(segment, replace_existing=upsert)
        log.info("added %d vectors (%d replaced, ntotal=%d)", len(xs), replaced, self.ntotal)

    def remove_ids(self, ids: Any) -> int:
        """Delete the vectors with these ids (unknown ids are ignored); returns how many were removed."""
        return self._store.remove(as_int64(ids).reshape(-1))

    def reset(self) -> None:
        """Remove every stored vector; the trained adapter is kept (as faiss ``reset``)."""
        self._store.replace([], [])

    def compact(self) -> None:
        """Merge all segments into one and drop deleted rows (also fine to never call)."""
        self._store.compact()

    # ---------------------------------------------------------------- lookups
    @property
    def ids(self) -> np.ndarray:
        """The live ids, in storage order (int64, a copy)."""
        return self._store.snapshot.live_ids()

    def keys_of(self, ids: Any) -> np.ndarray:
        """String keys for ids of any shape (object array); None where the id is -1 or has no key."""
        out = np.full(np.size(ids), None, dtype=object)
        for seg, at, rows in self._store.snapshot.groups(ids, allow_missing=True):
            out[at] = seg.keys_at(rows)
        return out.reshape(np.shape(ids))

    def reconstruct_codes(self, ids: Any) -> SparseCodes:
        """Stored codes of the given ids (KeyError for an unknown id)."""
        n = np.size(ids)
        indices = np.empty((n, self.k_doc), dtype=index_dtype(self.h))
        values = np.empty((n, self.k_doc), dtype=self.values_dtype)
        for seg, at, rows in self._store.snapshot.groups(ids):
            indices[at], values[at] = seg.codes.indices[rows], seg.codes.values[rows]
        return SparseCodes(indices, values, self.h)

    def codes(self) -> SparseCodes:
        """All live stored codes, in the order of :attr:`ids` (no copy when the index is one segment)."""
        snap = self._store.snapshot
        if len(snap.segments) == 1 and snap.deleted[0] is None:
            return snap.segments[0].codes
        return self.reconstruct_codes(snap.live_ids())

    def code_vectors(self) -> SparseCodes:
        """The stored codes as code x code scoring sees them (:meth:`CSREncoder.weigh`), in the
        order of :attr:`ids`: what an external sparse engine (e.g. Qdrant) should store."""
        return self.encoder.weigh(self.codes())

    def vectors(self) -> np.ndarray:
        """The stored originals (n, d), in the order of :attr:`ids` (needs store_vectors=True): float16 as
        stored; int8 ones (``vectors_dtype="int8"``) dequantised to float32 (codes times scales, a copy)."""
        if not self.store_vectors:
            raise ValueError("this index does not store the original vectors (store_vectors=False)")
        parts = self._store.snapshot.live("originals")
        dtype = np.float32 if self.vectors_dtype == np.int8 else np.float16
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty((0, self.d), dtype)

    # ---------------------------------------------------------------- search
    def set_engine(self, engine: str = "auto", **options: Any) -> "CSRIndex":
        """Choose the engine (and its options, see :mod:`csr_index.engines`) each segment searches with:
        ``"auto"`` (torch on CUDA, else ``"pruned"``, a sparse shortlist), ``"pruned"``, ``"inverted"``
        (exact), ``"torch"``, ``"scipy"``. Built at the next search, not saved; an unknown name or
        option is a ValueError now. Returns ``self``."""
        engine_options(engine, options)
        self._engine_spec = (engine, tuple(sorted(options.items())))
        return self

    def search(self, x: Any, topk: int | None = None, *, k: int | None = None, query_k: int | None = None,
               score: str = "asymmetric", rerank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``topk`` (default 10; ``k`` is the FAISS spelling) best stored vectors per query ``x`` (nq, d).

        ``score``: ``"asymmetric"`` (the dense query against each code's reconstruction),
        ``"code"`` (query code x doc code, as Qdrant computes) or ``"exact"`` (a flat scan
        of the stored originals). ``query_k``: latents of the query's code (default: the
        index's k): the posting lists a shortlist reads, and in ``"code"`` the query code
        itself. ``rerank``: re-score the best ``rerank`` of the shortlist exactly against the
        originals; default ``max(100, 10 * topk)`` when they are stored (three times that under
        ``"code"``, see :func:`~csr_index.scoring.default_rerank`), else 0 (off).
        Returns ``D`` float32 (nq, topk), descending — the last stage's score: cosine (inner product
        under 'ip') with the originals when re-ranked or exact, else the code-space score — and
        ``I`` int64 (nq, topk), padded with (-inf, -1).
        """
        if topk is not None and k is not None and topk != k:
            raise ValueError(f"topk={topk} and k={k} both give the number of results; pass one "
                             "(the query's latent budget is query_k)")
        topk = check_positive(topk if topk is not None else (k if k is not None else 10), "topk", 1 << 31)
        self.encoder.require_trained()
        query_k = self.k if query_k is None else check_positive(query_k, "query_k", self.k)
        if score not in (*SCORES, "exact"):
            raise ValueError(f"score must be one of {(*SCORES, 'exact')}, got {score!r}")
        if rerank is None:
            rerank = default_rerank(score, topk, self.ntotal) if self.store_vectors and score != "exact" else 0
        rerank = check_positive(rerank, "rerank") if rerank else 0
        if (rerank or score == "exact") and not self.store_vectors:
            raise ValueError("re-ranking and exact search need the originals: build the index with store_vectors=True")
        xq = self.prepare(x, "queries")
        snap = self._store.snapshot
        if score == "exact":
            return search_exact(snap, xq, topk)
        return search_codes(snap, self.encoder, SCORES[score], self._engine_spec, xq, topk, query_k, rerank)

    def rescore(self, x: Any, candidates: Any, topk: int, score: str | None = None,
                query_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``topk`` of given candidate ids (nq, R; -1 = none) per query, scored by ``score``:
        ``"exact"`` (the default when originals are stored), ``"asymmetric"`` (the default
        otherwise) or ``"code"``, as :meth:`search` defines them. R work per query, not a
        scan: for re-ranking a shortlist from elsewhere (e.g. Qdrant); an id listed twice counts once.
        KeyError for an unknown id."""
        topk = check_positive(topk, "topk", 1 << 31)
        self.encoder.require_trained()
        score = score or ("exact" if self.store_vectors else "asymmetric")
        xq = self.prepare(x, "queries")
        cand = np.asarray(candidates)
        if cand.ndim != 2 or cand.shape[0] != len(xq) or not np.issubdtype(cand.dtype, np.integer):
            raise ValueError(f"candidates must be integer ids of shape ({len(xq)}, R), got {cand.dtype} {cand.shape}")
        snap = self._store.snapshot
        cand = first_occurrences(cand.astype(np.int64))  # an id listed twice is scored (and returned) once
        if score == "exact":
            if not self.store_vectors:
                raise ValueError("exact re-scoring needs the original vectors: build with store_vectors=True")
            return rescore_exact(snap, xq, cand, topk)
        if score not in SCORES:
            raise ValueError(f"score must be one of {('exact', *SCORES)}, got {score!r}")
        query_k = self.k if query_k is None else check_positive(query_k, "query_k", self.k)
        return rescore_codes(snap, self.encoder, SCORES[score], xq, cand, topk, query_k)

    def stats(self) -> dict[str, Any]:
        """Sizes and latent usage: memory per vector by part (with the posting lists of the engine
        searches use, built now if no search has yet), unused latents, the busiest latent's share."""
        return index_stats(self._store.snapshot, self._engine_spec, self.encoder, k_doc=self.k_doc,
                           store_vectors=self.store_vectors, values_dtype=self.values_dtype,
                           vectors_dtype=self.vectors_dtype)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the index to the directory ``path`` atomically; only new segments' files are written
        when ``path`` already holds an earlier save (see :mod:`csr_index.storage`).

        Raises FileExistsError if ``path`` holds documents of an index this handle did not load from
        or save to there, and :class:`StaleIndexError` if ``path`` was saved by another handle or
        process after this one loaded or last saved it (a last-save-wins would drop that save's
        rows). ``overwrite=True`` replaces whatever index ``path`` holds, without either check."""
        self.encoder.require_trained()
        settings = {"k_doc": self.k_doc, "store_vectors": self.store_vectors, "values_dtype": str(self.values_dtype),
                    **({"vectors_dtype": "int8"} if self.vectors_dtype == np.int8 else {}),  # absent: float16
                    **({"cluster_rows": self.cluster_rows} if self.cluster_rows else {})}  # absent: off
        with self._store.lock:
            snap = self._store.snapshot
            key = str(Path(path).resolve())
            ours = key in self._saves
            self._saves[key] = write_index(path, self.encoder.meta(), self.encoder.state(), settings, snap.segments,
                                           snap.deleted, self._store.next_id, replace_documents=overwrite or ours,
                                           generation=None if overwrite else self._saves.get(key))

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True, progress: bool = False) -> "CSRIndex":
        """Open an index directory written by :meth:`save` (or :meth:`CSREncoder.save`); codes and
        originals are memory-mapped. ``verify`` checks every file's sha256. Raises
        :class:`MissingIndexFileError`, :class:`CorruptIndexError` or :class:`FormatVersionError`."""
        try:
            manifest = read_manifest(path)
            encoder = CSREncoder.from_manifest(path, manifest, verify=verify, progress=progress)
            segments, deleted = read_segments(path, manifest, encoder.h, encoder.d, verify=verify)
            index = cls.from_encoder(encoder, **{"vectors_dtype": "float16", "cluster_rows": None,  # absent: float16, off
                                                        **manifest["index"]})
        except IndexFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # settings or data the checks let by
            raise CorruptIndexError(f"the index at {path} is incomplete or invalid: {exc}") from exc
        index._store.replace(segments, deleted, manifest["next_id"])
        index._saves[str(Path(path).resolve())] = manifest_generation(manifest)
        if index.ntotal != manifest.get("ntotal"):
            raise CorruptIndexError(f"{path}: segments hold {index.ntotal} live rows, the manifest says "
                                    f"{manifest.get('ntotal')}")
        log.info("loaded %r from %s", index, path)
        return index

    @staticmethod
    def describe(path: str | os.PathLike) -> dict[str, Any]:
        """The manifest of a saved index (settings, counts, files), without loading it."""
        return read_manifest(path)

    @classmethod
    def from_sentence_transformers(cls, path: str | os.PathLike, *, metric: str | None = None, refit: bool = False,
                                   **kwargs: Any) -> "CSRIndex":
        """A trained, empty index whose adapter is a sentence-transformers CSR model (a SparseEncoder
        or SparseAutoEncoder directory; ``metric``, ``refit`` and the float32 ``values_dtype`` default:
        see :func:`csr_index.integrations.sentence_transformers.index_from_sentence_transformers`)."""
        kwargs.setdefault("values_dtype", "float32")  # stored codes are then ST's exactly
        index = cls.from_encoder(encoder_from_sentence_transformers(path, metric=metric, refit=refit), **kwargs)
        log.info("index from %s: %r", path, index)
        return index
