"""How a CSR encoder turns prepared vectors into codes: the batched product, then the compiled
CPU kernel or torch, and the tables each path reads, derived once per adapter.

:class:`EncodingPaths` is the encoding half of :class:`~csr_index.encoder.CSREncoder` (which
inherits it): on a CPU with h <= GRAM_MAX_H each batch's pre-activations go to the compiled per-row
kernel of :mod:`csr_index.sparsify` (top-k, refit, norms), a few rows through numpy alone; on a GPU,
or for wider adapters, the same steps run in torch. The host class provides ``require_trained``,
``config``, ``device``, ``d``, ``h``, ``progress`` and the ``_derived`` table cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .codes import SparseCodes, index_dtype
from .progress import progress_bar
from .sparsify import GRAM_MAX_H, encode_rows

if TYPE_CHECKING:
    from .model import SparseAdapter

__all__ = ["EncodingPaths", "WORKING_SET", "FEW_ROWS"]

WORKING_SET = 1 << 24
"""Float32 elements an encoding batch may hold in its largest block (64 MiB): the (batch, h)
pre-activations, or the (batch, k, d) atoms gathered when there is no gram matrix; the
batch shrinks as the model grows, so memory does not."""
FEW_ROWS = 16
"""Up to this many rows (a few queries) encode on the CPU with numpy and the compiled kernel alone, no torch."""


class EncodingPaths:
    """Encoding of prepared vectors for :class:`~csr_index.encoder.CSREncoder` (see the module docstring)."""

    _derived: dict[str, Any]

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device)

    def batch_size(self, k: int) -> int:
        """Vectors per encoding batch: its largest block stays under WORKING_SET elements."""
        widest = self.h if self.h <= GRAM_MAX_H else max(self.h, k * self.d)
        return int(max(64, min(8192, WORKING_SET // widest)))

    def _gram_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W W^T, W pre_bias) on the device, computed once per adapter; None above GRAM_MAX_H."""
        if "gram" not in self._derived and self.h <= GRAM_MAX_H:
            with torch.inference_mode():
                self._derived["gram"] = self.require_trained().gram()
        return self._derived.get("gram")

    def _query_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """numpy copies for the query path: W^T (d, h, contiguous: a single query's product reads it
        row after row, 30 % faster than W's transpose view), pre_bias (d,), and the shift (h,) that turns
        a projection into selection scores (``x W^T + latent_bias - W pre_bias + selection_bias``,
        the pre-activations plus the selection bias: what picks a code's support) and the
        selection bias (h,) itself."""
        if "query" not in self._derived:
            a = self.require_trained()
            with torch.inference_mode():
                W = a.W.detach().cpu().numpy().astype(np.float32)
                b = a.pre_bias.detach().cpu().numpy().astype(np.float32)
                shift = (a.latent_bias - a.W @ a.pre_bias + a.selection_bias).cpu().numpy().astype(np.float32)
                select = a.selection_bias.detach().cpu().numpy().astype(np.float32)
            self._derived["query"] = (np.ascontiguousarray(W.T), b, shift, select)
        return self._derived["query"]

    def encode_prepared(self, xs: np.ndarray, k: int, refit: bool | None = None) -> tuple[SparseCodes, np.ndarray]:
        """Codes (float32 values) of prepared vectors at ``k`` latents, and the L2 norms of
        their reconstructions (float32, n). ``refit`` defaults to ``config.refit``.

        Each batch is one product to pre-activations (torch; numpy for up to FEW_ROWS rows), then
        on a CPU the compiled per-row kernel of :mod:`csr_index.sparsify` (top-k, refit, norms);
        on a GPU, or above GRAM_MAX_H, the same steps in torch."""
        adapter = self.require_trained()
        refit = self.config.refit if refit is None else refit
        tables = self._gram_tables()
        compiled = self.cpu_tables() is not None
        if compiled and len(xs) <= FEW_ROWS:  # a few queries: a numpy product, no torch call (~0.5 ms for one)
            WT, shift = self.cpu_tables()[:2]
            pre = xs @ WT
            pre += shift
            indices, values, norms = self._encode_compiled(pre, k, refit)
            return SparseCodes(indices, values, self.h), norms.astype(np.float32)
        with torch.inference_mode():  # W pre_bias: the cached table when there is one (not a product per call)
            shift = adapter.latent_bias - (tables[1] if tables is not None else adapter.W @ adapter.pre_bias)
        step = self.batch_size(k)
        idx_parts, val_parts, norm_parts = [], [], []
        starts = range(0, len(xs), step)
        show = self.progress and len(xs) > 10 * step
        with torch.inference_mode():
            # one output buffer for every batch: a fresh (step, h) product each time page-faults
            # its memory in again (pypi-100k: ~20 % of the product's time)
            buffer = torch.empty((min(step, len(xs)), self.h), device=adapter.W.device, dtype=adapter.W.dtype)
            for s in progress_bar(starts, show, desc="encoding", unit="batch"):
                xb = self._tensor(xs[s : s + step])
                pre = torch.addmm(shift, xb, adapter.W.T, out=buffer[: len(xb)])  # = preactivations, one pass
                if compiled:
                    indices, values, norms = self._encode_compiled(pre.numpy(), k, refit)
                else:
                    values, indices, norms = self._encode_torch(adapter, pre, k, refit, tables)
                idx_parts.append(indices)
                val_parts.append(values)
                norm_parts.append(norms)
        codes = SparseCodes(np.concatenate(idx_parts), np.concatenate(val_parts), self.h)
        return codes, np.concatenate(norm_parts).astype(np.float32)

    def _encode_compiled(self, pre: np.ndarray, k: int, refit: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, values, norms) of pre-activations ``pre`` (n, h) by the compiled CPU kernel."""
        select, latent_bias, w_bias, bias_sq, gram = self.cpu_tables()[2:]
        return encode_rows(pre, k, gram, latent_bias, w_bias, bias_sq, refit, select=select,
                           index_dtype=index_dtype(self.h))

    def cpu_tables(self) -> tuple | None:
        """What the compiled CPU encoding path reads, as numpy copies made once per adapter: W^T
        (d, h), the pre-activation shift ``latent_bias - W pre_bias``, the selection bias (None when
        zero), latent_bias, W pre_bias, ||pre_bias||^2 and W W^T. None where that path does not
        apply (an encoder on a GPU, or h above GRAM_MAX_H): torch encodes instead."""
        if self.device.type != "cpu" or self._gram_tables() is None:
            return None
        if "cpu" not in self._derived:
            a = self.require_trained()
            gram, w_bias = self._gram_tables()
            with torch.inference_mode():
                select = a.selection_bias.detach().cpu().numpy() if bool(a.selection_bias.any()) else None
                self._derived["cpu"] = (self._query_tables()[0], (a.latent_bias - w_bias).detach().cpu().numpy(),
                                        select, a.latent_bias.detach().cpu().numpy(), w_bias.detach().cpu().numpy(),
                                        float(a.pre_bias.pow(2).sum()), gram.detach().cpu().numpy())
        return self._derived["cpu"]

    def _encode_torch(self, adapter: SparseAdapter, pre: torch.Tensor, k: int, refit: bool,
                      tables: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batch's (values, indices, norms) from its pre-activations, in torch (any device)."""
        values, indices = adapter.topk(pre, k)
        if not refit:  # slots by descending value, as the compiled kernel and refit give them
            values, order = torch.sort(values, dim=1, descending=True)
            indices = indices.gather(1, order)
        if tables is None:
            if refit:
                values, indices, _ = adapter.refit(pre, indices, adapter.support_gram(indices))
            norms = adapter.decode(values, indices).norm(dim=1)
        else:  # one gather of W_S W_S^T serves the refit and the norms
            g = adapter.support_gram(indices, tables[0])
            if refit:
                values, indices, order = adapter.refit(pre, indices, g)
                g = g.gather(1, order.unsqueeze(2).expand_as(g)).gather(2, order.unsqueeze(1).expand_as(g))
            norms = adapter.code_norms(values, indices, g, tables[1])
        return (values.cpu().numpy(), indices.cpu().numpy().astype(index_dtype(self.h)), norms.cpu().numpy())
