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
from .base import SearchEngine, empty_result

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
        log.debug("torch CSR engine: %d docs, %d non-zeros on %s", self.n, mat.nnz, self.device)

    def options(self) -> dict:
        return {"device": str(self.device)}

    @property
    def nbytes(self) -> int:
        t = self.docs
        return sum(int(x.numel() * x.element_size()) for x in (t.crow_indices(), t.col_indices(), t.values()))

    def _tensor(self, x: np.ndarray | None, dtype=np.float32) -> torch.Tensor | None:
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)).to(self.device)

    @torch.inference_mode()
    def _search(self, queries, topn, scale, skip, share=1.0):
        nq = queries.n
        sc, off = self._tensor(scale), self._tensor(queries.offset)
        dead = None if skip is None else self._tensor(skip, np.uint8).bool()
        sparse = queries.dense is None
        if sparse:
            idx = torch.from_numpy(queries.terms.indices.astype(np.int64)).to(self.device)
            val = torch.from_numpy(np.asarray(queries.terms.values, dtype=np.float32)).to(self.device)
        else:
            dense = self._tensor(queries.dense)
        step = max(1, min(nq, BLOCK_BYTES // (4 * (2 if sparse else 1) * max(1, self.n))))
        out_d, out_i = empty_result(nq, topn)
        take = min(topn, self.n)
        for s in range(0, nq, step):
            b = min(step, nq - s)
            if sparse:
                qi, qv = idx[s : s + b], val[s : s + b]
                values = torch.zeros(b, self.h, device=self.device).scatter_add_(1, qi, qv)
                support = torch.zeros(b, self.h, device=self.device).scatter_add_(1, qi, (qv != 0).float())
                prod = self.docs @ torch.cat([values, support.clamp_max_(1.0)]).T.contiguous()  # (n, 2b)
                scores, shared = prod[:, :b], prod[:, b:]
            else:
                scores, shared = self.docs @ dense[s : s + b].T.contiguous(), None
            if off is not None:
                scores = scores + off[s : s + b][None, :]
            if sc is not None:
                scores = scores * sc[:, None]
            if shared is not None:
                scores = scores.masked_fill(shared <= 0, float("-inf"))
            if dead is not None:
                scores = scores.masked_fill(dead[:, None], float("-inf"))
            vals, rows = torch.topk(scores.T, take, dim=1, largest=True, sorted=True)
            rows = rows.masked_fill(~torch.isfinite(vals), -1)
            vals = vals.masked_fill(rows < 0, float("-inf"))
            out_d[s : s + b, :take] = vals.cpu().numpy()
            out_i[s : s + b, :take] = rows.cpu().numpy()
        return out_d, out_i
