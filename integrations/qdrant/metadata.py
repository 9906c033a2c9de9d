"""What an export records with the collection (vector names, adapter fingerprint, value convention),
and the checks that keep codes of different adapters from being mixed or searched together."""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from csr_index import __version__

from .validation import Model, encoder_of, index_of

log = logging.getLogger(__name__)

DEFAULT_VECTOR_NAME = "csr"
DEFAULT_DENSE_VECTOR_NAME = "dense"
METADATA_KEY = "csr_index"
METADATA_FORMAT = 1

_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def adapter_sha256(model: Model) -> str:
    """sha256 of the adapter weights of a CSRIndex or CSREncoder (cached per adapter object)."""
    adapter = encoder_of(model).adapter
    cached = _FINGERPRINTS.get(adapter)
    if cached is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(adapter.state_dict().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32).tobytes())
        cached = _FINGERPRINTS[adapter] = digest.hexdigest()
    return cached


def _values(model: Model) -> str:
    return "weighted, l2-normalized" if encoder_of(model).metric == "cosine" else "weighted"


def index_metadata(
    model: Model, vector_name: str = DEFAULT_VECTOR_NAME, dense_vector_name: str | None = None,
    k_doc: int | None = None,
) -> dict[str, Any]:
    """What an export records in the collection's metadata (under ``"csr_index"``), for a CSRIndex
    or a CSREncoder; ``k_doc``: latents per stored code (default: the index's k_doc, or k).

    ``search`` checks it: a collection exported from another adapter, or with the
    other value convention, is refused instead of returning meaningless results.
    """
    encoder, index = encoder_of(model), index_of(model)
    if k_doc is None:
        k_doc = index.k_doc if index is not None else encoder.k
    return {
        "format": METADATA_FORMAT,
        "library_version": __version__,
        "adapter_sha256": adapter_sha256(encoder),
        "d": encoder.d,
        "h": encoder.h,
        "k": encoder.k,
        "k_doc": int(k_doc),
        "metric": encoder.metric,
        "values": _values(encoder),
        "vector_name": vector_name,
        "dense_vector_name": dense_vector_name,
        "dense_distance": "dot" if dense_vector_name else None,
        "dense_values": ("l2-normalized" if encoder.metric == "cosine" else "raw") if dense_vector_name else None,
    }


def check_search_metadata(found: Mapping[str, Any] | None, model: Model, where: str, vector_name: str) -> None:
    """Refuse to search a collection whose codes this adapter (a CSRIndex or CSREncoder) did not
    make (no metadata: no check)."""
    if not found:
        log.debug("%s carries no csr_index metadata; skipping the adapter check", where)
        return
    if found.get("adapter_sha256") != adapter_sha256(model):
        raise ValueError(
            f"{where} holds codes of another CSR adapter (sha256 {str(found.get('adapter_sha256'))[:12]}…, "
            f"this adapter {adapter_sha256(model)[:12]}…): its scores would be meaningless; "
            "export with this adapter to a new collection, or re-export with recreate=True"
        )
    if found.get("values") != _values(model):
        raise ValueError(
            f"{where} holds {found.get('values')} codes but metric={encoder_of(model).metric!r} needs {_values(model)} codes"
        )
    if found.get("vector_name") not in (None, vector_name):
        raise ValueError(
            f"{where} stores the codes under the sparse vector {found.get('vector_name')!r}, not {vector_name!r}"
        )


def check_export_metadata(found: Mapping[str, Any] | None, metadata: Mapping[str, Any], where: str,
                          remedy: str) -> None:
    """Refuse to add codes to a target that already holds codes of another adapter or value convention."""
    if found and (found.get("adapter_sha256") != metadata.get("adapter_sha256")
                  or found.get("values") != metadata.get("values")):
        raise ValueError(
            f"{where} already holds codes of another CSR adapter or value convention "
            f"({str(found.get('adapter_sha256', '?'))[:12]}…/{found.get('values')} vs "
            f"{str(metadata.get('adapter_sha256'))[:12]}…/{metadata.get('values')}); {remedy}"
        )
