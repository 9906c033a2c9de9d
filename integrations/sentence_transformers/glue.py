"""The thin glue between :class:`csr_index.CSRIndex` and the ST format (convert.py does the work).

Kept apart on purpose: it touches the index API (an encoder built from the converted adapter),
while the conversion functions do not depend on it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from csr_index.config import CSRConfig
from csr_index.encoder import CSREncoder
from csr_index.errors import NotTrainedError
from csr_index.index import CSRIndex

from ._deps import UnsupportedModelError
from .convert import STModelInfo, load_sparse_autoencoder, save_sparse_autoencoder, save_sparse_encoder

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
    adapter, k, info = load_sparse_autoencoder(path)
    metric = _metric_for(info, metric)
    config = CSRConfig(k=k, h=adapter.h, refit=bool(refit), idf_weights=False)
    meta = {"d": adapter.d, "h": adapter.h, "k": k, "metric": metric, "config": config.to_dict(),
            "train_stats": {"imported_from": str(Path(path).resolve()), "st_module": info.module_class}}
    state = {name: t.detach().cpu().numpy() for name, t in adapter.state_dict().items()}
    index_kwargs.setdefault("values_dtype", "float32")
    index = index_cls.from_encoder(CSREncoder.from_state(meta, state), **index_kwargs)
    log.info("index from %s: %r", path, index)
    return index


def _metric_for(info: STModelInfo, metric: str | None) -> str:
    if metric is not None:
        if metric not in ("cosine", "ip"):
            raise ValueError(f"metric must be 'cosine' or 'ip', got {metric!r}")
        if metric == "cosine" and not info.normalized_input:
            log.warning("metric='cosine' L2-normalises inputs before encoding; %s does not, so codes of "
                        "non-unit inputs will differ from ST's", info.path)
        return metric
    similarity = info.similarity_fn_name
    if similarity in (None, "dot"):
        return "ip"
    if similarity == "cosine":
        if info.normalized_input:
            return "cosine"
        raise UnsupportedModelError(
            f"{info.path} scores by cosine, but its SparseAutoEncoder input is not L2-normalised: csr-index's "
            "metric='cosine' would normalise it and change the codes. Pass metric='ip' (ST's codes, "
            "dot-product scores), or metric='cosine' to accept different codes"
        )
    raise UnsupportedModelError(f"{info.path}: similarity {similarity!r} has no csr-index metric (cosine, dot only)")


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
