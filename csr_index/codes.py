"""SparseCodes: a batch of k-sparse non-negative codes stored as two (n, k) arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    import torch

__all__ = ["SparseCodes", "index_dtype"]


def index_dtype(h: int) -> np.dtype:
    """Smallest unsigned dtype that holds a latent index below ``h`` (uint16 when h <= 65536)."""
    return np.dtype(np.uint16) if h <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class SparseCodes:
    """n codes in R^h with exactly k slots each, like ``torch.topk`` output.

    ``indices`` (n, k) uint16/uint32 latent ids and ``values`` (n, k) float32/float16,
    each row sorted by descending value. A slot whose value is 0 (ReLU cut it) is
    stored but carries no weight; ``to_scipy`` and ``to_torch`` drop it.
    Truncating to the first k' columns gives the k'-sparse code (adaptive k).
    """

    indices: np.ndarray
    values: np.ndarray
    h: int

    def __post_init__(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.ndim != 2:
            raise ValueError(
                f"indices {self.indices.shape} and values {self.values.shape} must be equal 2-D shapes"
            )

    @property
    def n(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"SparseCodes(n={self.n}, k={self.k}, h={self.h}, values={self.values.dtype})"

    def truncate(self, k: int) -> "SparseCodes":
        """The first ``k`` slots of each code, i.e. its ``k`` largest entries (a view, no copy).

        Without refit this is exactly the code the encoder gives at ``k``; with refit
        (``CSRConfig.refit``) encoding at ``k`` re-fits the values on that smaller support,
        so the two differ in their values (and slots a re-fit empties)."""
        if k >= self.k:
            return self
        return SparseCodes(self.indices[:, :k], self.values[:, :k], self.h)

    def norms(self) -> np.ndarray:
        """L2 norm of each code (n,), float32 (``np.linalg.norm(values, axis=1)``'s arithmetic)."""
        values = self.values.astype(np.float32, copy=False)
        return np.sqrt(np.add.reduce(values * values, axis=1))

    def normalized(self) -> "SparseCodes":
        """Codes scaled to unit L2 norm (float32 values): their inner product is the codes' cosine.

        An all-zero code stays zero.
        """
        norms = self.norms()
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return SparseCodes(self.indices, self.values.astype(np.float32) * scale[:, None], self.h)

    def nnz_per_row(self) -> np.ndarray:
        """Number of non-zero values in each code (n,)."""
        return np.count_nonzero(self.values, axis=1)

    def to_scipy(self, dtype: np.dtype | type = np.float32) -> sp.csr_array:
        """A scipy ``csr_array`` (n, h) without the empty (zero) slots; column indices sorted per row."""
        nz = self.values != 0
        counts = nz.sum(axis=1)
        indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        mat = sp.csr_array(
            (self.values[nz].astype(dtype, copy=False), self.indices[nz].astype(np.int32), indptr),
            shape=(self.n, self.h),
        )
        mat.sort_indices()
        return mat

    def to_torch(self, device: "str | torch.device | None" = None) -> "torch.Tensor":
        """A ``torch.sparse_csr_tensor`` (n, h), float32, on ``device``."""
        import warnings

        import torch

        mat = self.to_scipy()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            return torch.sparse_csr_tensor(
                torch.from_numpy(mat.indptr.astype(np.int64)),
                torch.from_numpy(mat.indices.astype(np.int64)),
                torch.from_numpy(mat.data),
                size=mat.shape,
                device=device,
            )

    def to_dense(self) -> np.ndarray:
        """Dense float32 (n, h); for small batches and tests only."""
        out = np.zeros((self.n, self.h), dtype=np.float32)
        np.put_along_axis(out, self.indices.astype(np.int64), self.values.astype(np.float32), axis=1)
        return out

    @staticmethod
    def concat(parts: "list[SparseCodes]") -> "SparseCodes":
        """Stack several batches with the same h and k."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:
            return parts[0]
        return SparseCodes(
            np.concatenate([p.indices for p in parts]), np.concatenate([p.values for p in parts]), parts[0].h
        )
