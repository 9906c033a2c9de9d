"""Writing sentence-transformers' CSR module (``SparseAutoEncoder``, formerly ``CSRSparsity``), alone
or at the end of a whole ``SparseEncoder``; reading them is :mod:`csr_index.st_model` (the format is
described there). Writing a module needs only safetensors; :func:`save_sparse_encoder` (a whole
pipeline) needs sentence-transformers.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from csr_index.model import SparseAdapter

from ._deps import sentence_transformers
from .text import _dimension, load_text_model

__all__ = ["save_sparse_autoencoder", "save_sparse_encoder"]

log = logging.getLogger(__name__)


def save_sparse_autoencoder(
    adapter: SparseAdapter, k: int, path: str | os.PathLike, *, k_aux: int | None = None, dead_threshold: int = 30
) -> Path:
    """Write ``adapter`` as a SparseAutoEncoder module directory (config.json + model.safetensors)
    that ``SparseAutoEncoder.load(path)`` reads; its codes equal ``adapter.encode(x, k)``.

    ``k_aux`` (only used by ST's training) defaults to min(512, h // 2). The adapter's
    ``latent_weight`` (IDF) has no place in ST's format and is dropped, with a warning
    when it is not all ones. Returns the directory.
    """
    if not isinstance(adapter, SparseAdapter):
        raise TypeError(f"adapter must be a SparseAdapter, got {type(adapter).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= adapter.h:
        raise ValueError(f"k must be an integer in [1, {adapter.h}], got {k!r}")
    if not torch.all(adapter.latent_weight == 1):
        log.warning("the adapter's per-latent (IDF) weights are not part of sentence-transformers' format: "
                    "ST scores unweighted codes (csr-index's code score with idf_weights=False)")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "input_dim": adapter.d,
        "hidden_dim": adapter.h,
        "k": k,
        "k_aux": min(512, adapter.h // 2) if k_aux is None else int(k_aux),
        "normalize": False,
        "dead_threshold": int(dead_threshold),
    }
    (out / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    tensors = {
        "encoder.weight": adapter.W.detach().cpu().to(torch.float32).contiguous(),
        "pre_bias": adapter.pre_bias.detach().cpu().to(torch.float32).contiguous(),
        "latent_bias": adapter.latent_bias.detach().cpu().to(torch.float32).contiguous(),
        "stats_last_nonzero": torch.zeros(adapter.h, dtype=torch.long),
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    log.info("wrote SparseAutoEncoder d=%d h=%d k=%d to %s", adapter.d, adapter.h, k, out)
    return out


def save_sparse_encoder(
    adapter: SparseAdapter,
    k: int,
    path: str | os.PathLike,
    base_model: str | os.PathLike,
    *,
    metric: str = "cosine",
    device: str = "cpu",
) -> Path:
    """Write a whole SparseEncoder: the local sentence-transformers model ``base_model`` (its
    modules, unchanged) followed by ``adapter`` as a SparseAutoEncoder, ``max_active_dims=k``.

    ``metric`` is the csr-index metric to reproduce: ``"cosine"`` L2-normalises the SAE's input
    (a Normalize module is appended unless the base model ends with one, as csr-index normalises
    its inputs) and sets ST's similarity to cosine; ``"ip"`` feeds the base embedding as is,
    with dot-product similarity. Needs sentence-transformers. Returns the directory.
    """
    if metric not in ("cosine", "ip"):
        raise ValueError(f"metric must be 'cosine' or 'ip', got {metric!r}")
    st = sentence_transformers()
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    base = load_text_model(base_model, device=device)
    dim = _dimension(base)
    if dim is not None and dim != adapter.d:
        raise ValueError(f"{base_model} embeds in {dim} dimensions but the adapter reads d={adapter.d}")
    modules = list(base)
    if metric == "cosine" and type(modules[-1]).__name__ != "Normalize":
        modules.append(Normalize())
    with tempfile.TemporaryDirectory() as tmp:
        sae = SparseAutoEncoder.load(str(save_sparse_autoencoder(adapter, k, tmp)))
    model = st.SparseEncoder(
        modules=[*modules, sae], device=device, max_active_dims=k,
        similarity_fn_name="cosine" if metric == "cosine" else "dot",
    )
    model.save(str(path))
    log.info("wrote SparseEncoder (%s + SparseAutoEncoder) to %s", ", ".join(type(m).__name__ for m in modules), path)
    return Path(path)

