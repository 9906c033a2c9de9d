"""CSREncoder: the trained CSR adapter on its own — dense vectors in, k-sparse codes out.

An encoder is everything a client needs to talk to an index that lives elsewhere (e.g.
a Qdrant collection): it prepares vectors (L2-normalised under ``metric="cosine"``),
encodes them, projects queries for asymmetric scoring, decodes codes, and weighs codes
the way code x code scoring does. It is saved and loaded as an index directory without
documents (:meth:`save`, :meth:`load`), so ``CSRIndex.load`` of that directory gives
a trained, empty index. How it encodes (the compiled CPU kernel or torch, and the tables
each reads) is :mod:`csr_index.encoding`, which it inherits.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from .codes import SparseCodes
from .config import CSRConfig
from .encoding import EncodingPaths
from .errors import CorruptIndexError, NotTrainedError
from .manifest import read_manifest
from .model import SparseAdapter
from .sparsify import support_rows
from .storage import read_adapter, write_index
from .train import resolve_device, train_adapter
from .validation import as_matrix, check_positive, sample_rows

__all__ = ["CSREncoder", "METRICS"]

log = logging.getLogger(__name__)

METRICS = ("cosine", "ip")
STATS_SAMPLE = 32_768
"""Training vectors whose codes give the IDF weights and the reported fvu (all of them when fewer)."""

class CSREncoder(EncodingPaths):
    """A CSR adapter (:class:`SparseAdapter`) with its metric, latent weights and config.

    >>> enc = CSREncoder(384, k=32).fit(xb)        # h defaults to 4 * d
    >>> codes = enc.encode(xb)                    # SparseCodes (n, 32)
    >>> enc.save("adapter.csr"); enc = CSREncoder.load("adapter.csr")

    ``k`` and ``h`` may be given here or in ``config``, not differently in both. The
    adapter trains and encodes on ``config.device`` (``None``: CUDA when available).
    """

    def __init__(
        self,
        d: int,
        k: int | None = None,
        h: int | None = None,
        *,
        metric: str = "cosine",
        config: CSRConfig | None = None,
        progress: bool = False,
    ) -> None:
        self.d = check_positive(d, "d", 1 << 20)
        self.config = (config if config is not None else CSRConfig()).resolve(self.d, h, k)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self.progress = progress
        self.adapter: SparseAdapter | None = None
        self.train_stats: dict[str, Any] = {}
        self._derived: dict[str, Any] = {}
        """Tables derived from the adapter's weights (gram matrix, numpy copies), built on first use."""

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles drop the derived tables
        return {**self.__dict__, "_derived": {}}

    @property
    def h(self) -> int:
        return self.config.h

    @property
    def k(self) -> int:
        return self.config.k

    @property
    def is_trained(self) -> bool:
        return self.adapter is not None

    @property
    def device(self) -> torch.device:
        """Where the adapter runs (training and encoding); resolved once (a CUDA probe costs ~10 us)."""
        if "device" not in self._derived:
            self._derived["device"] = resolve_device(self.config.device)
        return self._derived["device"]

    def __repr__(self) -> str:
        return f"CSREncoder(d={self.d}, h={self.h}, k={self.k}, metric={self.metric!r}, is_trained={self.is_trained})"

    def require_trained(self) -> SparseAdapter:
        if self.adapter is None:
            raise NotTrainedError("the CSR adapter is not trained yet: call train(x) / fit(x) first")
        return self.adapter

    def prepare(self, x: Any, name: str = "x") -> np.ndarray:
        """Validate vectors (n, d) and return them as float32, L2-normalised under metric='cosine'."""
        arr = as_matrix(x, self.d, name)
        if self.metric == "cosine":
            norms = np.linalg.norm(arr, axis=1, keepdims=True)
            if (norms == 0).any():
                raise ValueError(f"{name} has all-zero rows, which have no direction under metric='cosine'")
            arr = arr / norms
        return arr

    # --------------------------------------------------------------- training
    def fit(self, x: Any, pairs: tuple[Any, Any] | None = None, idf_k: int | None = None) -> "CSREncoder":
        """Train the adapter on vectors ``x`` (n, d) — a random sample of ``config.max_train``
        of them when there are more —; returns ``self``.

        ``pairs`` = (queries, positives), two (m, d) arrays of matching rows, turns the
        contrastive term into supervised InfoNCE on those pairs. With ``config.idf_weights``
        the latent weights become sqrt(IDF) over the codes of ``x`` at ``idf_k`` latents
        (default ``k``; an index passes the latents it stores per document).
        """
        n = len(x) if hasattr(x, "__len__") else None
        cap = self.config.max_train
        rows = None if n is None else sample_rows(n, cap, np.random.default_rng(self.config.seed))
        if rows is not None:
            log.info("training on a random sample of %d of the %d vectors (CSRConfig.max_train)", cap, n)
            x = np.asarray(x)[rows]
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
        self.adapter, self._derived = result.adapter.to(self.device), {}
        # IDF weights and the reported fvu from the codes of (a sample of) the training vectors
        rows = sample_rows(len(xs), STATS_SAMPLE, np.random.default_rng(self.config.seed))
        xe = xs if rows is None else xs[rows]
        codes = self.encode_prepared(xe, self.k if idf_k is None else idf_k)[0]
        if self.config.idf_weights:
            self.adapter.set_latent_weights(
                torch.from_numpy(codes.indices.astype(np.int64)), torch.from_numpy(codes.values), len(xe)
            )
            self._derived.pop("weight", None)
        residual = xe - self.decode(codes)
        spread = float(((xe - xe.mean(0)) ** 2).sum())
        self.train_stats = {
            "n_train": int(len(xs)),
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            # fraction of variance unexplained by the stored codes of (a sample of) the training vectors
            "fvu": round(float((residual**2).sum()) / max(spread, 1e-12), 5),
            "dead_fraction": result.dead_fraction,
        }
        return self

    # --------------------------------------------------------------- encoding
    def encode(self, x: Any, k: int | None = None) -> SparseCodes:
        """k-sparse codes (float32 values) of vectors ``x`` (n, d); ``k`` defaults to the encoder's k."""
        k = self.k if k is None else check_positive(k, "k", self.k)
        return self.encode_prepared(self.prepare(x), k)[0]

    def project(self, xs: np.ndarray, k: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The dense side of asymmetric scoring for prepared queries: ``x W^T`` (n, h) and
        ``x . pre_bias`` (n,), so that ``x . decode(z) = (x W^T) . z + x . pre_bias``; with ``k``
        also the support of each query's k-code (n, k), -1 in slots ReLU empties — the same
        latents :meth:`encode` picks, from the same single product (numpy: for a few queries
        torch's per-call overhead costs more than the product itself)."""
        WT, pre_bias, shift, selection_bias = self._query_tables()
        projected = xs @ WT
        offset = xs @ pre_bias
        if k is None:
            return projected, offset, None
        return projected, offset, support_rows(projected + shift, selection_bias, k)

    def decode(self, codes: SparseCodes) -> np.ndarray:
        """Reconstruct dense float32 vectors (n, d) from codes."""
        adapter = self.require_trained()
        with torch.inference_mode():
            values = self._tensor(codes.values.astype(np.float32))
            indices = self._tensor(codes.indices.astype(np.int64))
            return adapter.decode(values, indices).cpu().numpy()

    # ---------------------------------------------------- code x code scoring
    @property
    def latent_weight(self) -> np.ndarray:
        """Weight of each latent in code x code scores (h,), float32, read-only (a numpy copy made once
        per adapter: a single query's search would otherwise pay a torch-to-numpy copy)."""
        if "weight" not in self._derived:
            weight = self.require_trained().latent_weight.detach().cpu().numpy().copy()
            weight.setflags(write=False)
            self._derived["weight"] = weight
        return self._derived["weight"]

    def weigh(self, codes: SparseCodes) -> SparseCodes:
        """Codes as code x code scoring sees them (float32): values times the latent weights,
        L2-normalised under metric='cosine'. The inner product of two weighed codes is their
        code score, so these are what an external sparse engine (e.g. Qdrant) stores."""
        weighted = SparseCodes(codes.indices, codes.values.astype(np.float32) * self.latent_weight[codes.indices], self.h)
        return weighted.normalized() if self.metric == "cosine" else weighted

    def query_code_vectors(self, x: Any, k: int | None = None) -> SparseCodes:
        """Weighed codes (see :meth:`weigh`) of query vectors ``x`` (n, d) at ``k`` latents."""
        k = self.k if k is None else check_positive(k, "k", self.k)
        return self.weigh(self.encode_prepared(self.prepare(x, "queries"), k)[0])

    # ------------------------------------------------------------ persistence
    def meta(self) -> dict[str, Any]:
        """What the manifest records about the encoder."""
        return {"d": self.d, "h": self.h, "k": self.k, "metric": self.metric, "config": self.config.to_dict(),
                "train_stats": self.train_stats}

    def state(self) -> dict[str, np.ndarray]:
        """The adapter's tensors as numpy arrays (for safetensors)."""
        return {name: t.detach().cpu().numpy() for name, t in self.require_trained().state_dict().items()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], state: dict[str, np.ndarray], progress: bool = False) -> "CSREncoder":
        """Rebuild an encoder from :meth:`meta` and :meth:`state` (KeyError / ValueError when inconsistent)."""
        enc = cls(int(meta["d"]), int(meta["k"]), int(meta["h"]), metric=meta["metric"],
                  config=CSRConfig.from_dict(meta["config"]), progress=progress)
        enc.train_stats = dict(meta.get("train_stats", {}))
        blank = SparseAdapter(enc.d, enc.h).state_dict()
        state = {"selection_bias": blank["selection_bias"].numpy(), **state}  # states from before load balancing
        expected = {name: tuple(t.shape) for name, t in blank.items()}
        shapes = {name: tuple(arr.shape) for name, arr in state.items()}
        if shapes != expected:
            raise ValueError(f"adapter tensors {shapes} do not match {expected}")
        if not all(np.isfinite(arr).all() for arr in state.values()):
            raise ValueError("adapter weights contain NaN or inf")
        adapter = SparseAdapter(enc.d, enc.h)
        adapter.load_state_dict({name: torch.from_numpy(np.array(arr, dtype=np.float32)) for name, arr in state.items()})
        enc.adapter = adapter.eval().to(enc.device)
        return enc

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the encoder as an index directory without documents (atomic, see
        :mod:`csr_index.storage`). A ``path`` that holds an index with documents (e.g. the one this
        encoder was loaded from) is refused with FileExistsError unless ``overwrite``."""
        settings = {"k_doc": self.k, "store_vectors": False, "values_dtype": "float32"}
        write_index(path, self.meta(), self.state(), settings, (), (), replace_documents=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True, progress: bool = False) -> "CSREncoder":
        """The encoder of any index directory; its documents are not read."""
        return cls.from_manifest(path, read_manifest(path), verify=verify, progress=progress)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, manifest: dict[str, Any], verify: bool = True,
                      progress: bool = False) -> "CSREncoder":
        """The encoder that ``manifest`` (:func:`~csr_index.manifest.read_manifest` of the index
        directory ``path``) records, with its adapter file (``verify``: its sha256 checked).
        CorruptIndexError when they do not make a valid encoder."""
        state = read_adapter(path, manifest, verify)
        try:
            return cls.from_state(manifest["encoder"], state, progress=progress)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndexError(f"the encoder of {path} is incomplete or invalid: {exc}") from exc
