"""The thin glue between :class:`csr_index.CSRIndex` and the ST format: an index from an ST model
(:meth:`csr_index.CSRIndex.from_sentence_transformers` does the work, with :mod:`csr_index.st_model`),
and an index's adapter written back for ST (convert.py does the work)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from csr_index.errors import NotTrainedError
from csr_index.index import CSRIndex

from .convert import save_sparse_autoencoder, save_sparse_encoder

__all__ = ["index_from_sentence_transformers", "export_index"]

log = logging.getLogger(__name__)


def index_from_sentence_transformers(
    path: str | os.PathLike,
    *,
    metric: str | None = None,
    refit: bool = False,
    index_cls: type[CSRIndex] = CSRIndex,
    **index_kwargs: Any,
) -> CSRIndex:
    """A trained, empty :class:`CSRIndex` whose adapter is the sentence-transformers CSR model at
    ``path`` (a SparseEncoder or SparseAutoEncoder directory, see :func:`load_sparse_autoencoder`).

    Add the dense embeddings the SparseAutoEncoder reads (the pipeline's output before it, e.g.
    from :func:`embed_texts` with the same directory) and ``search(..., score="code")`` ranks as
    ST's ``similarity`` on its ``encode`` output: ``k`` is ST's ``max_active_dims``, latent
    (IDF) weights are off (``idf_weights=False``; ST has none) and ``refit=False`` keeps ST's values.
    ``refit=True`` re-solves the values by least squares on the same k latents: lower reconstruction
    error (better asymmetric scores), but codes, and code scores, no longer equal ST's.
    ``metric`` defaults from ST's similarity: 'dot' (or a bare module) -> ``"ip"``; 'cosine' ->
    ``"cosine"`` when a Normalize module feeds the SparseAutoEncoder (csr-index L2-normalises
    inputs under cosine, which then changes nothing). Other ``index_kwargs`` go to ``CSRIndex``;
    stored values default to float32 here (``values_dtype``), so stored codes are ST's exactly.
    """
    return index_cls.from_sentence_transformers(path, metric=metric, refit=refit, **index_kwargs)


def export_index(index: CSRIndex, path: str | os.PathLike, base_model: str | os.PathLike | None = None) -> Path:
    """Write a trained index's adapter for sentence-transformers: a SparseAutoEncoder module
    directory, or with ``base_model`` (a local ST model directory) a whole SparseEncoder that
    embeds text and encodes it as this index does (see :func:`save_sparse_encoder`).

    ST's codes equal ``index.encode(x)`` when ``index.config.refit`` is False and the adapter
    was trained without selectivity balancing (``balance_cap=None``). With refit on (the library
    default) ST keeps the encoder's values, which the index re-solves; with balancing on (also the
    default) ST picks the k largest pre-activations, while the index adds its per-latent
    selection bias first, so the two differ on latents near the k-th place. ST has no latent (IDF)
    weights: its similarity is the index's code score with ``idf_weights=False``.
    """
    adapter = index.adapter
    if adapter is None:
        raise NotTrainedError("this CSRIndex is not trained: nothing to export")
    if index.config.refit:
        log.warning("this index encodes with refit=True: ST's codes have the same latents but the encoder's "
                    "values, not the re-fitted ones this index stores")
    if bool(adapter.selection_bias.any()):
        log.warning("this adapter was trained with selectivity balancing: ST has no selection bias, so its "
                    "codes pick the k largest pre-activations and differ from this index's near the k-th latent")
    if base_model is None:
        if index.metric == "cosine":
            log.info("the module encodes its input as is: L2-normalise vectors first, as the index does")
        return save_sparse_autoencoder(adapter, index.k, path)
    return save_sparse_encoder(adapter, index.k, path, base_model, metric=index.metric)
