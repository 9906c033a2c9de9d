"""The one interface export and search use, over a QdrantClient collection or a qdrant-edge shard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from .client import ClientTarget
from .edge import EdgeCollection
from .edge_target import EdgeTarget
from .layout import Storage
from .plan import QueryPlan
from .validation import SparseRow

Target = Any
"""What users pass: a ``qdrant_client.QdrantClient`` (remote or local mode), an :class:`EdgeCollection`,
or a bare ``qdrant_edge.EdgeShard``."""


class Backend(Protocol):
    """A collection as export and search see it: :class:`ClientTarget` or :class:`EdgeTarget`."""

    @property
    def local(self) -> bool:
        """Whether uploads must come from one thread (local mode, qdrant-edge)."""

    def describe(self) -> str: ...

    def prepare(self, *, idf: bool, dense_size: int | None, metadata: dict | None, recreate: bool,
                create: Mapping[str, Any], storage: Storage | None = None) -> None:
        """Create the collection, or check an existing one's layout and adapter; record ``metadata``."""

    def check_layout(self, *, idf: bool | None, dense_size: int | None, storage: Storage | None = None) -> None: ...

    def has_dense(self, size: int) -> bool:
        """Whether the collection has the dense vector of this size (server-side re-rank needs it)."""

    def sparse_has_idf(self) -> bool: ...

    def dense_graph(self) -> bool | None:
        """Whether Qdrant builds an HNSW graph over the dense vector (None: no dense vector, or unknown)."""

    def read_metadata(self) -> dict | None: ...

    def count(self) -> int: ...

    def existing(self, ids: list[int]) -> set[int]:
        """Which of ``ids`` the collection holds."""

    def upsert(self, ids: list[int], sparse: list[SparseRow], dense: list[list[float]] | None,
               payloads: list[dict] | None) -> None: ...

    def flush(self) -> None: ...

    def query(self, sparse: list[SparseRow | None], dense: np.ndarray | None,
              plan: QueryPlan) -> list[list[tuple[Any, float]]]: ...

    def payloads(self, ids: list[int], fields: list[str]) -> dict[int, dict]: ...


def open_target(client: Target, collection_name: Any, vector_name: str, dense_name: str | None,
                *, wait: bool = True) -> Backend:
    """The backend for what the user passed; ``collection_name`` must be None for a qdrant-edge shard."""
    if isinstance(client, EdgeCollection) or type(client).__name__ == "EdgeShard":
        if collection_name is not None:
            raise ValueError(
                f"collection_name={collection_name!r} does not apply to a qdrant-edge shard "
                "(a shard is one collection); pass None"
            )
        return EdgeTarget(client, vector_name, dense_name)
    return ClientTarget(client, collection_name, vector_name, dense_name, wait=wait)
