"""Search engines behind one interface (:class:`SearchEngine`); :class:`csr_index.CSRIndex` picks one.

============ ======= =========================================================================
name         exact   what it is
============ ======= =========================================================================
``pruned``   no      sparse shortlist from the query terms' posting lists -> exact scores from
                     the forward index (Seismic-style); the default on CPU
``inverted`` yes     numba term-at-a-time over posting lists (or a forward scan for dense
                     queries) + heap top-n, threads over queries
``torch``    yes     ``torch.sparse_csr_tensor`` @ queries + ``topk``; CUDA or CPU tensors
``scipy``    yes     the reference: scipy SpGEMM / SpMM + argpartition, one thread
============ ======= =========================================================================

``"auto"`` is ``torch`` on a CUDA device, else ``pruned``.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from ..codes import SparseCodes
from .base import QueryBatch, SearchEngine
from .inverted import InvertedIndexEngine
from .pruned import PrunedEngine
from .reference import ScipyEngine
from .torch_csr import TorchCSREngine

__all__ = [
    "QueryBatch",
    "SearchEngine",
    "ScipyEngine",
    "InvertedIndexEngine",
    "PrunedEngine",
    "TorchCSREngine",
    "ENGINES",
    "engine_options",
    "make_engine",
    "resolve_engine_name",
]

ENGINES: dict[str, type[SearchEngine]] = {
    cls.name: cls for cls in (ScipyEngine, InvertedIndexEngine, PrunedEngine, TorchCSREngine)
}


def resolve_engine_name(name: str, device: str | None = None) -> str:
    """The engine ``"auto"`` stands for: ``torch`` when ``device`` (default: CUDA if available)
    is a CUDA device, else ``pruned``. Other names are checked and returned unchanged."""
    if name == "auto":
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return "torch" if torch.device(device).type == "cuda" else "pruned"
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {['auto', *ENGINES]}")
    return name


def engine_options(name: str, options: dict[str, Any]) -> tuple[type[SearchEngine], dict[str, Any]]:
    """The engine class ``name`` stands for and the options it is built with; ValueError for an
    unknown name or an option that class does not take."""
    resolved = resolve_engine_name(name, options.get("device"))
    cls = ENGINES[resolved]
    if name == "auto" and resolved != "torch":
        options = {k: v for k, v in options.items() if k != "device"}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "codes", "clusters"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"engine {resolved!r} has no option(s) {unknown}; its options are {sorted(accepted)}")
    return cls, options


def make_engine(name: str, codes: SparseCodes, clusters: np.ndarray | None = None, **options: Any) -> SearchEngine:
    """Build engine ``name`` (see the table above) over ``codes`` with its ``options``
    (e.g. ``make_engine("pruned", codes, candidates=500)``); ``clusters``: the row starts of
    clustered codes (see :mod:`csr_index.clusters`), for an engine that takes them."""
    cls, options = engine_options(name, options)
    if clusters is not None and cls.takes_clusters:
        options = {**options, "clusters": clusters}
    return cls(codes, **options)
