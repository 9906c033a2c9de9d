"""The optional dependencies (qdrant-client, qdrant-edge-py), imported on first use with an install hint."""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

EDGE_VERSION = "0.9.0"
INSTALL_HINT = "pip install 'csr-index[qdrant]'"


def qdrant_models() -> Any:
    """``qdrant_client.models``; ImportError with the install hint when qdrant-client is missing."""
    try:
        from qdrant_client import models
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the Qdrant integration needs qdrant-client: {INSTALL_HINT}") from exc
    return models


@functools.cache
def qdrant_edge() -> Any:
    """The ``qdrant_edge`` module; warns once if its version is not ``EDGE_VERSION`` (its API is beta)."""
    try:
        import qdrant_edge
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the embedded Qdrant backend needs qdrant-edge-py=={EDGE_VERSION}: {INSTALL_HINT}") from exc
    try:
        from importlib.metadata import version

        found = version("qdrant-edge-py")
    except Exception:  # noqa: BLE001 - metadata may be missing in odd installs
        found = "unknown"
    if found != EDGE_VERSION:
        log.warning(
            "qdrant-edge-py %s is installed; csr-index is tested with %s only (its API is beta): %s",
            found, EDGE_VERSION, INSTALL_HINT,
        )
    return qdrant_edge
