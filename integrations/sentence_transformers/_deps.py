"""sentence-transformers, imported on first use with an install hint."""

from __future__ import annotations

from typing import Any

from csr_index.st_model import UnsupportedModelError

INSTALL_HINT = "pip install 'csr-index[st]'"

__all__ = ["INSTALL_HINT", "UnsupportedModelError", "sentence_transformers"]


def sentence_transformers() -> Any:
    """The ``sentence_transformers`` package; ImportError with the install hint when it is missing."""
    try:
        import sentence_transformers as st
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"this needs sentence-transformers: {INSTALL_HINT}") from exc
    return st
