"""GPU engine: stored codes as a ``torch.sparse_csr_tensor`` on the device, sparse x dense matmul + topk.

The same code runs on CPU tensors (that is how CI tests it); on a CUDA device the
matmul is cuSPARSE SpMM and the top-k ``torch.topk``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from ..codes import SparseCodes
from .base import SearchEngine, check_topn, empty_result

__all__ = ["TorchCSREngine"]

log = logging.getLogger(__name__)
BLOCK_BYTES = 1 << 28


def _csr(crow: np.ndarray, col: np.ndarray, val: np.ndarray, shape: tuple[int, int], device) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow.astype(np.int64)), torch.from_numpy(col.astype(np.int64)),
            torch.from_numpy(val), size=shape, device=device, check_invariants=False,
        )


class TorchCSREngine(SearchEngine):
    """Exact search with torch sparse CSR matmul, batched over queries.

    Docs (n, h) are a CSR tensor; a block of queries becomes a dense (h, b) matrix
    and ``docs @ Q`` gives all (n, b) scores at once. For sparse queries a second
    block of columns holds each query's support (1 where its value is non-zero),
    so the same product counts shared latents: docs sharing none are not results.
    Blocks are sized so the (n, 2b) score matrix stays under 256 MiB.
    """

    name = "torch"
    exact = True

    def __init__(self, codes: SparseCodes, device: str | torch.device | None = None) -> None:
        super().__init__(codes)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        mat = codes.to_scipy()
        self.docs = _csr(mat.indptr, mat.indices, mat.data.astype(np.float32), mat.shape, self.device)
        log.info("torch CSR engine: %d docs, %d non-zeros on %s", self.n, mat.nnz, self.device)

    def options(self) -> dict:
        return {"device": str(self.device)}

    @property
    def nbytes(self) -> int:
        t = self.docs
        return sum(int(x.numel() * x.element_size()) for x in (t.crow_indices(), t.col_indices(), t.values()))

    def _block(self, nq: int, width: int) -> int:
        return max(1, min(nq, BLOCK_BYTES // (4 * width * max(1, self.n))))

    def _finish(self, scores: torch.Tensor, shared: torch.Tensor | None, topn: int, s: int,
                scale: torch.Tensor | None, offset: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, b) raw products -> top ``topn`` per query (b, topn), invalid = (-inf, -1)."""
        if offset is not None:
            scores = scores + offset[s : s + scores.shape[1]][None, :]
        if scale is not None:
            scores = scores * scale[:, None]
        if shared is not None:
            scores = scores.masked_fill(shared <= 0, float("-inf"))
        take = min(topn, self.n)
        vals, rows = torch.topk(scores.T, take, dim=1, largest=True, sorted=True)
        rows = rows.masked_fill(~torch.isfinite(vals), -1)
        vals = vals.masked_fill(rows < 0, float("-inf"))
        return vals, rows

    def _tensor(self, x: np.ndarray | None, length: int, name: str) -> torch.Tensor | None:
        if x is None:
            return None
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.shape != (length,):
            raise ValueError(f"{name} must have shape ({length},), got {arr.shape}")
        return torch.from_numpy(arr).to(self.device)

    def _collect(self, parts: list[tuple[torch.Tensor, torch.Tensor]], nq: int, topn: int):
        out_d, out_i = empty_result(nq, topn)
        if parts:
            vals = torch.cat([p[0] for p in parts]).cpu().numpy()
            rows = torch.cat([p[1] for p in parts]).cpu().numpy()
            out_d[:, : vals.shape[1]] = vals
            out_i[:, : rows.shape[1]] = rows
        return out_d, out_i

    @torch.inference_mode()
    def search_sparse(self, queries, topn, scale=None, offset=None):
        topn = check_topn(topn)
        if queries.h != self.h:
            raise ValueError(f"queries live in R^{queries.h}, the stored codes in R^{self.h}")
        nq = queries.n
        if self.n == 0 or nq == 0:
            return empty_result(nq, topn)
        sc, off = self._tensor(scale, self.n, "scale"), self._tensor(offset, nq, "offset")
        idx = torch.from_numpy(queries.indices.astype(np.int64)).to(self.device)
        val = torch.from_numpy(np.asarray(queries.values, dtype=np.float32)).to(self.device)
        parts = []
        step = self._block(nq, 2)
        for s in range(0, nq, step):
            b = min(step, nq - s)
            qi, qv = idx[s : s + b], val[s : s + b]
            values = torch.zeros(b, self.h, device=self.device).scatter_add_(1, qi, qv)
            support = torch.zeros(b, self.h, device=self.device).scatter_add_(1, qi, (qv != 0).float()).clamp_max_(1.0)
            rhs = torch.cat([values, support]).T.contiguous()  # (h, 2b): the values, then the supports
            prod = self.docs @ rhs
            parts.append(self._finish(prod[:, :b], prod[:, b:], topn, s, sc, off))
        return self._collect(parts, nq, topn)

    @torch.inference_mode()
    def search_dense(self, queries, topn, scale=None, offset=None):
        topn = check_topn(topn)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.h:
            raise ValueError(f"dense queries must have shape (nq, {self.h}), got {q.shape}")
        nq = len(q)
        if self.n == 0 or nq == 0:
            return empty_result(nq, topn)
        sc, off = self._tensor(scale, self.n, "scale"), self._tensor(offset, nq, "offset")
        qt = torch.from_numpy(q).to(self.device)
        parts = []
        step = self._block(nq, 1)
        for s in range(0, nq, step):
            prod = self.docs @ qt[s : s + step].T.contiguous()
            parts.append(self._finish(prod, None, topn, s, sc, off))
        return self._collect(parts, nq, topn)
