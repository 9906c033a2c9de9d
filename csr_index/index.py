"""CSRIndex: a FAISS-shaped index over learned k-sparse codes."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from . import __version__
from .codes import SparseCodes, index_dtype
from .config import CSRConfig
from .errors import CorruptIndexError, NotTrainedError
from .model import SparseAdapter
from .engines import SearchEngine, make_engine, resolve_engine_name
from .engines.rerank import rerank_topn
from .search import rerank_exact, score_rows, top_entries
from .storage import IndexFiles, fixed_size_column, read_index, read_manifest, write_index
from .train import train_adapter
from .validation import as_ids, as_matrix, check_k

__all__ = ["CSRIndex", "SCORES", "METRICS"]

log = logging.getLogger(__name__)

SCORES = ("asymmetric", "code")
METRICS = ("cosine", "ip")
ENCODE_BATCH = 8192


class CSRIndex:
    """Dense vectors in, k-sparse CSR codes stored, searched by sparse inner product.

    >>> index = CSRIndex(d=384, k=32)        # h defaults to 4 * d
    >>> index.train(xb); index.add(xb)
    >>> D, I = index.search(xq, 10)          # float32 (nq, 10), int64 (nq, 10), -1 = no result

    Parameters
    ----------
    d: dimension of the dense vectors.
    k: active latents the adapter is trained for; queries use up to k
        (``search(..., k=k')`` may use fewer: one index, every query budget).
    k_doc: active latents per *stored* code (default ``k``); smaller means a smaller
        index from the same adapter (the ``k_doc`` largest latents of each doc's code).
    h: width of the code space (default ``4 * d``).
    metric: ``"cosine"`` (vectors are L2-normalised; the default, as for most text
        embedding models) or ``"ip"`` (raw inner product).
    store_vectors: also keep the dense originals (float16, memory-mapped after
        ``load``) so ``search`` can re-rank its shortlist exactly (as faiss IndexRefineFlat).
    values_dtype: ``"float32"`` or ``"float16"`` for stored code values.
    config: training hyper-parameters; its ``h`` and ``k`` are overridden by the arguments.
    engine: the search engine (see :mod:`csr_index.engines`): ``"auto"`` (torch on CUDA,
        else the numba inverted index), ``"inverted"``, ``"pruned"`` (approximate),
        ``"torch"`` or ``"scipy"``; options with :meth:`set_engine`. Not saved with the index.
    """

    def __init__(
        self,
        d: int,
        k: int = 32,
        h: int | None = None,
        *,
        k_doc: int | None = None,
        metric: str = "cosine",
        store_vectors: bool = False,
        values_dtype: str = "float32",
        config: CSRConfig | None = None,
        progress: bool = False,
        engine: str = "auto",
    ) -> None:
        self.d = check_k(d, 1 << 20, "d")
        self.h = check_k(h if h is not None else 4 * self.d, 1 << 32, "h")
        self.k = check_k(k, self.h, "k")
        self._k_doc = self.k if k_doc is None else check_k(k_doc, self.k, "k_doc")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if values_dtype not in ("float32", "float16"):
            raise ValueError(f"values_dtype must be 'float32' or 'float16', got {values_dtype!r}")
        self.metric = metric
        self.store_vectors = bool(store_vectors)
        self.values_dtype = np.dtype(values_dtype)
        base = config if config is not None else CSRConfig()
        self.config = CSRConfig.from_dict({**base.to_dict(), "h": self.h, "k": self.k})
        self.progress = progress
        resolve_engine_name(engine, "cpu")  # reject an unknown name now, not at the first search
        self._engine_spec: tuple[str, dict[str, Any]] = (engine, {})
        self.adapter: SparseAdapter | None = None
        self.train_stats: dict[str, Any] = {}
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Remove every stored vector; the trained adapter is kept (as faiss ``reset``)."""
        self._ids = np.empty(0, dtype=np.int64)
        self._codes = SparseCodes(
            np.empty((0, self.k_doc), dtype=index_dtype(self.h)),
            np.empty((0, self.k_doc), dtype=self.values_dtype),
            self.h,
        )
        self._norms = np.empty(0, dtype=np.float32)
        self._vectors = np.empty((0, self.d), dtype=np.float16) if self.store_vectors else None
        self._keys: list[str | None] | None = None
        self._pending: list[tuple[np.ndarray, SparseCodes, np.ndarray, np.ndarray | None, list | None]] = []
        self._scorer: SearchEngine | None = None
        self._doc_scales: dict[str, np.ndarray | None] | None = None
        self._row_of: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def k_doc(self) -> int:
        """Active latents per stored code; settable while the index is empty."""
        return self._k_doc

    @k_doc.setter
    def k_doc(self, value: int) -> None:
        if self.ntotal:
            raise ValueError(f"k_doc can only change while the index is empty (it holds {self.ntotal}); call reset() first")
        self._k_doc = check_k(value, self.k, "k_doc")
        self.reset()

    @property
    def is_trained(self) -> bool:
        return self.adapter is not None

    @property
    def ntotal(self) -> int:
        return len(self._ids) + sum(len(p[0]) for p in self._pending)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (
            f"CSRIndex(d={self.d}, h={self.h}, k={self.k}, k_doc={self.k_doc}, metric={self.metric!r}, "
            f"ntotal={self.ntotal}, is_trained={self.is_trained})"
        )

    def _require_trained(self) -> SparseAdapter:
        if self.adapter is None:
            raise NotTrainedError("this CSRIndex is not trained yet: call index.train(x) first")
        return self.adapter

    def _flush(self) -> None:
        """Merge vectors added since the last search into the main arrays."""
        if not self._pending:
            return
        ids, codes, norms, vecs, keys = zip(*self._pending)
        self._ids = np.concatenate([self._ids, *ids])
        self._codes = SparseCodes.concat([self._codes, *codes])
        self._norms = np.concatenate([self._norms, *norms])
        if self._vectors is not None:
            self._vectors = np.concatenate([self._vectors, *vecs])
        if self._keys is not None or any(k is not None for k in keys):
            merged = list(self._keys) if self._keys is not None else [None] * (len(self._ids) - sum(map(len, ids)))
            for batch_ids, batch_keys in zip(ids, keys):
                merged.extend(batch_keys if batch_keys is not None else [None] * len(batch_ids))
            self._keys = merged
        self._pending = []
        self._scorer = None
        self._row_of = None
        self._doc_scales = None

    # --------------------------------------------------------------- training
    def prepare(self, x: Any, name: str = "x") -> np.ndarray:
        """Validate vectors (n, d) and return them as float32, L2-normalised under metric='cosine'."""
        arr = as_matrix(x, self.d, name)
        if self.metric == "cosine":
            norms = np.linalg.norm(arr, axis=1, keepdims=True)
            if (norms == 0).any():
                raise ValueError(f"{name} has all-zero rows, which have no direction under metric='cosine'")
            arr = arr / norms
        return arr

    def train(self, x: Any, pairs: tuple[Any, Any] | None = None) -> "CSRIndex":
        """Fit the sparse adapter on float vectors ``x`` (n, d). Returns ``self``.

        ``pairs`` = (queries, positives), two (m, d) arrays of matching rows, turns
        the contrastive term into supervised InfoNCE on those pairs.
        Training again replaces the adapter; stored codes would no longer match it,
        so the index must be empty.
        """
        if self.ntotal:
            raise ValueError(f"the index already holds {self.ntotal} vectors; call reset() before re-training")
        xs = self.prepare(x)
        pair_arrays = None
        if pairs is not None:
            if len(pairs) != 2:
                raise ValueError("pairs must be a (queries, positives) tuple")
            pq, pp = self.prepare(pairs[0], "pairs[0]"), self.prepare(pairs[1], "pairs[1]")
            if len(pq) != len(pp):
                raise ValueError(f"pairs have {len(pq)} queries but {len(pp)} positives")
            pair_arrays = (pq, pp)
        log.info("training CSR adapter: n=%d d=%d h=%d k=%d", len(xs), self.d, self.h, self.k)
        result = train_adapter(xs, self.d, self.h, self.config, pairs=pair_arrays, progress=self.progress)
        self.adapter = result.adapter
        if self.config.idf_weights:
            codes = self._encode(xs, self.k_doc)[0]
            self.adapter.set_latent_weights(
                torch.from_numpy(codes.indices.astype(np.int64)), torch.from_numpy(codes.values), len(xs)
            )
        self.train_stats = {
            "n_train": int(len(xs)),
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "fvu": result.fvu,
            "dead_fraction": result.dead_fraction,
        }
        return self

    # --------------------------------------------------------------- encoding
    def _encode(self, x: np.ndarray, k: int) -> tuple[SparseCodes, np.ndarray]:
        """Codes of prepared vectors and the norms of their reconstructions."""
        adapter = self._require_trained()
        idx_parts, val_parts, norm_parts = [], [], []
        starts = range(0, len(x), ENCODE_BATCH)
        show = self.progress and len(starts) > 1
        with torch.inference_mode():
            for s in tqdm(starts, desc="encoding", unit="batch", disable=not show):
                xb = torch.from_numpy(x[s : s + ENCODE_BATCH])
                values, indices = adapter.encode(xb, k)
                if self.config.refit:
                    values, indices = adapter.refit(xb, indices)
                norm_parts.append(adapter.decode(values, indices).norm(dim=1).numpy())
                idx_parts.append(indices.numpy().astype(index_dtype(self.h)))
                val_parts.append(values.numpy())
        codes = SparseCodes(np.concatenate(idx_parts), np.concatenate(val_parts), self.h)
        return codes, np.concatenate(norm_parts).astype(np.float32)

    def encode(self, x: Any, k: int | None = None) -> SparseCodes:
        """k-sparse codes (float32 values) of vectors ``x`` (n, d); ``k`` defaults to the index's k."""
        k = self.k if k is None else check_k(k, self.k)
        return self._encode(self.prepare(x), k)[0]

    def decode(self, codes: SparseCodes) -> np.ndarray:
        """Reconstruct dense float32 vectors (n, d) from codes."""
        adapter = self._require_trained()
        with torch.inference_mode():
            values = torch.from_numpy(codes.values.astype(np.float32))
            indices = torch.from_numpy(codes.indices.astype(np.int64))
            return adapter.decode(values, indices).numpy()

    # ----------------------------------------------------------------- adding
    def add(self, x: Any, keys: Sequence[str] | None = None) -> None:
        """Encode and store vectors ``x`` (n, d) with ids ``ntotal .. ntotal + n - 1``."""
        n = as_matrix(x, self.d).shape[0]
        self.add_with_ids(x, np.arange(self.ntotal, self.ntotal + n, dtype=np.int64), keys=keys)

    def add_with_ids(self, x: Any, ids: Any, keys: Sequence[str] | None = None) -> None:
        """Encode and store vectors ``x`` (n, d) under int64 ``ids`` (unique, >= 0).

        ``keys`` optionally gives each vector a string key (e.g. a document id), kept
        with the index and returned by :meth:`keys_of`.
        """
        self._require_trained()
        xs = self.prepare(x)
        new_ids = as_ids(ids, len(xs))
        if keys is not None:
            keys = [str(k) for k in keys]
            if len(keys) != len(xs):
                raise ValueError(f"keys has {len(keys)} entries but there are {len(xs)} vectors")
        self._flush()
        clash = np.intersect1d(new_ids, self._ids)
        if clash.size:
            raise ValueError(f"ids already in the index: {clash[:5].tolist()}")
        codes, norms = self._encode(xs, self.k_doc)
        if self.values_dtype == np.float16 and codes.values.size and codes.values.max() > np.finfo(np.float16).max:
            raise ValueError(
                f"code values up to {codes.values.max():.3g} overflow float16 (max 65504); "
                "use values_dtype='float32' or normalise the vectors"
            )
        codes = SparseCodes(codes.indices, codes.values.astype(self.values_dtype), self.h)
        vecs = xs.astype(np.float16) if self.store_vectors else None
        self._pending.append((new_ids, codes, norms, vecs, keys))
        log.info("added %d vectors (ntotal=%d)", len(xs), self.ntotal)

    # ---------------------------------------------------------------- lookups
    def _rows_for(self, ids: Any) -> np.ndarray:
        """Storage rows of ``ids`` (any shape; -1 stays -1); KeyError for an id not in the index."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._row_of is None:
            order = np.argsort(self._ids, kind="stable")
            self._row_of = (order, self._ids[order])
        order, sorted_ids = self._row_of
        rows = np.full(flat.shape, -1, dtype=np.int64)
        valid = flat >= 0
        if valid.any():
            pos = np.minimum(np.searchsorted(sorted_ids, flat[valid]), max(len(sorted_ids) - 1, 0))
            found = (sorted_ids[pos] == flat[valid]) if len(sorted_ids) else np.zeros(int(valid.sum()), bool)
            if not found.all():
                raise KeyError(f"unknown ids: {flat[valid][~found][:5].tolist()}")
            rows[valid] = order[pos]
        return rows.reshape(np.shape(ids))

    def reconstruct_codes(self, ids: Any) -> SparseCodes:
        """Stored codes of the given ids (KeyError for an unknown id)."""
        self._flush()
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        if (flat < 0).any():
            raise KeyError(f"unknown ids: {flat[flat < 0][:5].tolist()}")
        rows = self._rows_for(flat)
        return SparseCodes(self._codes.indices[rows], self._codes.values[rows], self.h)

    def keys_of(self, ids: Any) -> np.ndarray:
        """String keys for an array of ids of any shape; None where the id is -1 or has no key."""
        self._flush()
        arr = np.asarray(ids, dtype=np.int64)
        out = np.full(arr.shape, None, dtype=object)
        rows = self._rows_for(arr).reshape(-1)
        if self._keys is not None:
            out.reshape(-1)[rows >= 0] = [self._keys[r] for r in rows[rows >= 0]]
        return out

    @property
    def ids(self) -> np.ndarray:
        """The stored ids, in storage order (int64, read-only view)."""
        self._flush()
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def codes(self) -> SparseCodes:
        """All stored codes, in the order of :attr:`ids`."""
        self._flush()
        return self._codes

    def vectors(self) -> np.ndarray:
        """The stored float16 originals (n, d), in the order of :attr:`ids` (needs store_vectors=True)."""
        if not self.store_vectors:
            raise ValueError("this index does not store the original vectors (store_vectors=False)")
        self._flush()
        return self._vectors

    def stats(self) -> dict[str, Any]:
        """Sizes and latent usage: bytes per vector, unused latents, the busiest latent's share."""
        self._flush()
        code_bytes = self.k_doc * (self._codes.indices.dtype.itemsize + self.values_dtype.itemsize)
        per_vector = code_bytes + 8 + 4  # + id (int64) + reconstruction norm (float32)
        counts = np.bincount(self._codes.indices[self._codes.values > 0].astype(np.int64), minlength=self.h)
        out: dict[str, Any] = {
            "d": self.d,
            "h": self.h,
            "k": self.k,
            "k_doc": self.k_doc,
            "metric": self.metric,
            "ntotal": self.ntotal,
            "is_trained": self.is_trained,
            "code_bytes_per_vector": code_bytes,
            "index_bytes_per_vector": per_vector + (2 * self.d if self.store_vectors else 0),
            "dense_float32_bytes_per_vector": 4 * self.d,
            "indices_dtype": str(self._codes.indices.dtype),
            "values_dtype": str(self.values_dtype),
            "store_vectors": self.store_vectors,
        }
        if self.ntotal:
            out["mean_nonzeros_per_code"] = round(float((self._codes.values > 0).sum(1).mean()), 2)
            out["latents_unused_by_stored_codes"] = int((counts == 0).sum())
            out["busiest_latent_doc_fraction"] = round(float(counts.max() / self.ntotal), 4)
        out.update({f"train_{k}": v for k, v in self.train_stats.items()})
        return out

    def code_vectors(self) -> SparseCodes:
        """The stored codes as code x code scoring sees them (float32): weighted by the
        adapter's latent weights and L2-normalised under metric='cosine'. The inner product
        of :meth:`query_code_vectors` and these is the ``score="code"`` score, so they are
        what an external sparse engine (e.g. Qdrant) should store.
        """
        self._flush()
        return self._weigh(self._codes)

    def query_code_vectors(self, x: Any, k: int | None = None) -> SparseCodes:
        """Query codes of ``x`` (n, d) as code x code scoring sees them (see :meth:`code_vectors`)."""
        k = self.k if k is None else check_k(k, self.k)
        return self._weigh(self._encode(self.prepare(x, "queries"), k)[0])

    def _weigh(self, codes: SparseCodes) -> SparseCodes:
        weights = self._require_trained().latent_weight.numpy()
        weighted = SparseCodes(codes.indices, codes.values.astype(np.float32) * weights[codes.indices], self.h)
        return weighted.normalized() if self.metric == "cosine" else weighted

    # ---------------------------------------------------------------- search
    def set_engine(self, engine: str = "auto", **options: Any) -> "CSRIndex":
        """Choose the search engine and its options (see :mod:`csr_index.engines`), e.g.
        ``index.set_engine("pruned", query_cut=8, candidates=500)``; built at the next search.
        Returns ``self``.
        """
        resolve_engine_name(engine, options.get("device", "cpu"))
        self._engine_spec = (engine, dict(options))
        self._scorer = None
        return self

    @property
    def engine(self) -> SearchEngine:
        """The search engine over the stored codes (built on first use)."""
        self._flush()
        if self._scorer is None:
            name, options = self._engine_spec
            self._scorer = make_engine(name, self._codes, **options)
            log.info("search engine: %r", self._scorer)
        return self._scorer

    def search(
        self,
        x: Any,
        topk: int = 10,
        k: int | None = None,
        score: str = "asymmetric",
        rerank: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the ``topk`` nearest stored vectors of each query in ``x`` (nq, d).

        ``score``: ``"asymmetric"`` (default) scores the dense query against each stored
            code's reconstruction (inner product, or cosine under metric='cosine'); the
            doc side stays k-sparse. ``"code"`` scores query code x doc code, what an
            inverted index (or Qdrant) computes: only docs sharing a latent with the
            query code are results.
        ``k``: active latents per query. In ``"code"`` mode the query code's size
            (default: the index's k). In ``"asymmetric"`` mode ``None`` uses the whole
            projected query; ``k`` keeps it only on the latents of the query's k-code
            (cheaper: only those posting lists are read, and only docs sharing one count).
        ``rerank``: re-score the best ``rerank`` candidates exactly against the stored
            originals (needs ``store_vectors=True``). Default: ``max(100, 10 * topk)``
            when originals are stored, else no re-ranking; 0 turns it off.
        Returns ``D`` float32 (nq, topk), descending, and ``I`` int64 (nq, topk),
        padded with (-inf, -1) where fewer than ``topk`` results exist.
        """
        self._require_trained()
        topk = check_k(topk, 1 << 31, "topk")
        if rerank is None:
            rerank = max(100, 10 * topk) if self.store_vectors else 0
        elif isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
            raise ValueError(f"rerank must be a non-negative integer, got {rerank!r}")
        if rerank and not self.store_vectors:
            raise ValueError("rerank needs the original vectors: build the index with store_vectors=True")
        xq = self.prepare(x, "queries")
        queries, offset, scale = self._query_terms(xq, score, k)
        self._flush()
        if self.ntotal == 0:
            return _empty(len(xq), topk)
        shortlist = max(topk, rerank)
        if isinstance(queries, SparseCodes):
            D, rows = self.engine.search_sparse(queries, shortlist, scale, offset)
        else:
            D, rows = self.engine.search_dense(queries, shortlist, scale, offset)
        if rerank:
            D, rows = rerank_topn(xq, rows, self._vectors, topk)
        else:
            D, rows = D[:, :topk], rows[:, :topk]
        return D, self._ids_of_rows(rows)

    def rescore(
        self, x: Any, candidates: Any, topk: int, score: str = "exact", k: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score given candidate ids (nq, R; -1 = none) per query exactly as :meth:`search`
        would in mode ``score`` (``"exact"``, ``"asymmetric"`` or ``"code"``) and keep the
        best ``topk``: re-ranking a shortlist from elsewhere (e.g. Qdrant) costs R work per
        query, not a scan. Returns (D, I) as :meth:`search`; KeyError for an unknown id.
        """
        self._require_trained()
        topk = check_k(topk, 1 << 31, "topk")
        xq = self.prepare(x, "queries")
        cand = np.asarray(candidates)
        if cand.ndim != 2 or cand.shape[0] != len(xq) or not np.issubdtype(cand.dtype, np.integer):
            raise ValueError(f"candidates must be integer ids of shape ({len(xq)}, R), got {cand.dtype} {cand.shape}")
        if score == "exact":
            if not self.store_vectors:
                raise ValueError("exact re-scoring needs the original vectors: build with store_vectors=True")
            self._flush()
            D, rows = rerank_exact(xq, self._rows_for(cand), self._vectors, topk)
            return D, self._ids_of_rows(rows)
        queries, offset, scale = self._query_terms(xq, score, k)
        self._flush()
        rows = self._rows_for(cand)
        scores = score_rows(queries, self._codes, rows, scale, offset)
        D, pos = top_entries(scores, topk)
        return D, np.where(pos >= 0, np.take_along_axis(cand.astype(np.int64), np.maximum(pos, 0), axis=1), -1)

    def _query_terms(
        self, xq: np.ndarray, score: str, k: int | None
    ) -> tuple[np.ndarray | SparseCodes, np.ndarray | None, np.ndarray | None]:
        """Prepared queries in code space for a scoring mode, with per-query offsets and per-doc scales.

        The score of doc ``d`` is ``(q . z_d + offset_q) * scale_d``; a sparse ``q``
        (SparseCodes) also means that only docs sharing one of its latents count.
        code: the inner product of query_code_vectors() and code_vectors(): q = the weighted
        (and, under cosine, normalised) query code times the latent weights, scale = 1 / ||z_d * w||.
        asymmetric: q = x_q W^T (with ``k``: kept only on the latents of the query's k-code), offset =
        x_q . pre_bias, so q . z_d + offset = x_q . decode(z_d); scale = 1 / ||decode(z_d)|| under cosine.
        """
        adapter = self._require_trained()
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if k is not None:
            k = check_k(k, self.k)
        self._flush()
        scales = self._get_doc_scales()
        if score == "code":
            # code_vectors() = raw stored codes * w / ||z_d * w||: the engine keeps the raw
            # codes, so the query carries the second weight factor and the doc norm is a scale
            queries = self._weigh(self._encode(xq, self.k if k is None else k)[0])
            weights = adapter.latent_weight.numpy()
            queries = SparseCodes(queries.indices, queries.values * weights[queries.indices], self.h)
            return queries, None, scales["code"]
        with torch.inference_mode():
            xt = torch.from_numpy(xq)
            projected = adapter.project(xt).numpy()
            offset = (xt @ adapter.pre_bias).numpy()
        if k is None:
            return projected, offset, scales["asymmetric"]
        # keep the projection only on the latents of the query's k-code (its non-empty slots)
        codes = self._encode(xq, k)[0]
        cut = np.take_along_axis(projected, codes.indices.astype(np.int64), axis=1)
        cut[codes.values == 0] = 0.0
        return SparseCodes(codes.indices, cut, self.h), offset, scales["asymmetric"]

    def _get_doc_scales(self) -> dict[str, np.ndarray | None]:
        if self._doc_scales is None:
            if self.metric == "cosine":
                weighted = SparseCodes(self._codes.indices, self._codes.values.astype(np.float32)
                                       * self.adapter.latent_weight.numpy()[self._codes.indices], self.h)
                self._doc_scales = {"code": _inverse(weighted.norms()), "asymmetric": _inverse(self._norms)}
            else:
                self._doc_scales = {"code": None, "asymmetric": None}
        return self._doc_scales

    def _ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to the directory ``path``, atomically (see :mod:`csr_index.storage`)."""
        adapter = self._require_trained()
        self._flush()
        k = self.k_doc
        columns = {
            "id": pa.array(self._ids, type=pa.int64()),
            "indices": pa.FixedSizeListArray.from_arrays(pa.array(self._codes.indices.ravel()), k),
            "values": pa.FixedSizeListArray.from_arrays(pa.array(self._codes.values.ravel()), k),
            "norm": pa.array(self._norms, type=pa.float32()),
        }
        if self._keys is not None:
            columns["key"] = pa.array(self._keys, type=pa.string())
        meta = {
            "library_version": __version__,
            "d": self.d,
            "h": self.h,
            "k": self.k,
            "k_doc": self.k_doc,
            "metric": self.metric,
            "store_vectors": self.store_vectors,
            "ntotal": int(len(self._ids)),
            "dtypes": {"indices": str(self._codes.indices.dtype), "values": str(self.values_dtype), "vectors": "float16"},
            "config": self.config.to_dict(),
            "train_stats": self.train_stats,
        }
        state = {name: t.detach().cpu().numpy() for name, t in adapter.state_dict().items()}
        write_index(path, IndexFiles(meta=meta, adapter=state, codes=pa.table(columns), vectors=self._vectors))

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True, progress: bool = False) -> "CSRIndex":
        """Open an index directory written by :meth:`save`; codes and vectors are memory-mapped.

        ``verify`` checks every file's sha256. Raises :class:`MissingIndexFileError`,
        :class:`CorruptIndexError` or :class:`FormatVersionError` with the reason.
        """
        files = read_index(path, verify=verify)
        meta = files.meta
        try:
            index = cls(
                int(meta["d"]),
                k=int(meta["k"]),
                h=int(meta["h"]),
                k_doc=int(meta.get("k_doc", meta["k"])),
                metric=meta["metric"],
                store_vectors=bool(meta["store_vectors"]),
                values_dtype=meta["dtypes"]["values"],
                config=CSRConfig.from_dict(meta["config"]),
                progress=progress,
            )
            ntotal = int(meta["ntotal"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndexError(f"the manifest of {path} is incomplete or invalid: {exc}") from exc
        index.train_stats = dict(meta.get("train_stats", {}))
        index.adapter = _adapter_from_state(files.adapter, index.d, index.h, path)
        table = files.codes
        if table.num_rows != ntotal:
            raise CorruptIndexError(f"{path}: codes file has {table.num_rows} rows, the manifest says {ntotal}")
        idx_dtype = index_dtype(index.h)
        indices = fixed_size_column(table, "indices", idx_dtype)
        values = fixed_size_column(table, "values", index.values_dtype)
        if indices.shape != (ntotal, index.k_doc) or values.shape != (ntotal, index.k_doc):
            raise CorruptIndexError(f"{path}: codes have shape {indices.shape}, expected ({ntotal}, {index.k_doc})")
        if ntotal and int(indices.max()) >= index.h:
            raise CorruptIndexError(f"{path}: a latent index exceeds h={index.h}")
        if not np.isfinite(values).all() or (values < 0).any():
            raise CorruptIndexError(f"{path}: code values must be finite and non-negative")
        ids = table.column("id").to_numpy()
        if ids.dtype != np.int64 or len(np.unique(ids)) != ntotal or (ntotal and ids.min() < 0):
            raise CorruptIndexError(f"{path}: ids must be unique non-negative int64")
        index._ids = ids
        index._codes = SparseCodes(indices, values, index.h)
        index._norms = table.column("norm").to_numpy()
        if "key" in table.column_names:
            index._keys = table.column("key").to_pylist()
        if index.store_vectors:
            if files.vectors is None or files.vectors.shape != (ntotal, index.d):
                raise CorruptIndexError(f"{path}: stored vectors are missing or have the wrong shape")
            index._vectors = files.vectors
        log.info("loaded %r from %s", index, path)
        return index

    @staticmethod
    def describe(path: str | os.PathLike) -> dict[str, Any]:
        """The manifest of a saved index (config, counts, dtypes, files), without loading it."""
        return read_manifest(path)


def _inverse(norms: np.ndarray) -> np.ndarray:
    """1 / norm, with 0 for an all-zero code (it then scores 0 against everything)."""
    norms = norms.astype(np.float32)
    return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)


def _empty(nq: int, topk: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, topk), -np.inf, dtype=np.float32), np.full((nq, topk), -1, dtype=np.int64)


def _adapter_from_state(state: dict[str, np.ndarray], d: int, h: int, path: Any) -> SparseAdapter:
    expected = {"W": (h, d), "pre_bias": (d,), "latent_bias": (h,), "latent_weight": (h,), "selection_bias": (h,)}
    shapes = {name: tuple(arr.shape) for name, arr in state.items()}
    if "selection_bias" not in shapes:  # indexes saved before load balancing existed: plain TopK
        state = {**state, "selection_bias": np.zeros(h, dtype=np.float32)}
        shapes["selection_bias"] = (h,)
    if shapes != expected:
        raise CorruptIndexError(f"{path}: adapter tensors {shapes} do not match {expected}")
    if not all(np.isfinite(arr).all() for arr in state.values()):
        raise CorruptIndexError(f"{path}: adapter weights contain NaN or inf")
    adapter = SparseAdapter(d, h)
    adapter.load_state_dict({name: torch.from_numpy(np.array(arr, dtype=np.float32)) for name, arr in state.items()})
    return adapter.eval()
