"""Load balancing of the TopK support: keeps "hub" latents from firing on most vectors.

A latent active in most codes makes every posting-list search read most of the corpus. The
adapter's ``selection_bias`` shifts which latents the TopK picks (never their values); training
lowers it for latents above a cap, batch by batch (:func:`update_selection_bias`), and
:func:`settle_selection_bias` finishes the job on a sample once training ends, so the cap holds
on the data, not only on average over noisy batches.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .config import CSRConfig
from .model import SparseAdapter

__all__ = ["firing_rates", "update_selection_bias", "settle_selection_bias"]

log = logging.getLogger(__name__)


def firing_rates(values: torch.Tensor, indices: torch.Tensor, h: int) -> torch.Tensor:
    """Share (h,) of the batch's codes in which each latent is active (value > 0)."""
    counts = torch.zeros(h, dtype=values.dtype, device=values.device)
    counts.index_add_(0, indices.reshape(-1), (values > 0).reshape(-1).to(values.dtype))
    return counts / values.shape[0]


def update_selection_bias(adapter: SparseAdapter, rates: torch.Tensor, k: int, config: CSRConfig) -> None:
    """One step of soft-capped load balancing of the TopK support.

    A latent active in more than ``balance_cap * k / h`` of the batch's codes has its
    selection bias lowered by ``balance_step``; every other latent's bias relaxes by the same
    step back towards 0 (never above). Only hubs are pushed; ordinary latents keep plain TopK.
    """
    cap = config.balance_cap * k / adapter.h
    step = config.balance_step
    b = adapter.selection_bias
    b.copy_(torch.where(rates > cap, b - step, (b + step).clamp_max(0.0)))


def settle_selection_bias(adapter: SparseAdapter, x: torch.Tensor, k: int, cap: float, rounds: int = 4) -> int:
    """Lower the selection bias of every latent active in more than ``cap`` (a share) of the codes of
    ``x`` (n, d), just enough that it no longer is: by the margin, in its m-th weakest row, between
    its selection score and the score of the row's (k+1)-th latent (m = rows over the cap). The
    latents that take its place can cross the cap in turn, so this repeats up to ``rounds``
    times. Returns the number of latents lowered. A batch-wise update (:func:`update_selection_bias`)
    only holds the cap on average over batches; this makes it hold on the data."""
    n, h = x.shape[0], adapter.h
    limit = int(cap * n)
    lowered: set[int] = set()
    with torch.no_grad():
        pre = adapter.preactivations(x)
        for _ in range(rounds):
            score = pre + adapter.selection_bias
            top = torch.topk(score, min(k + 1, h), dim=1)
            idx = top.indices[:, :k]
            active = pre.gather(1, idx) > 0
            counts = torch.bincount(idx[active], minlength=h)
            over = torch.nonzero(counts > limit).flatten()
            if len(over) == 0:
                break
            rows, slots = torch.nonzero(active & torch.isin(idx, over), as_tuple=True)
            latents = idx[rows, slots]
            margins = (score[rows, latents] - top.values[rows, k]).numpy() if top.values.shape[1] > k else None
            if margins is None:
                break
            order = np.lexsort((margins, latents.numpy()))
            lat_sorted = latents.numpy()[order]
            starts = np.searchsorted(lat_sorted, over.numpy())
            drop = (counts[over] - limit).numpy()  # rows each hub must leave
            shift = margins[order][starts + drop - 1] + 1e-6
            adapter.selection_bias[over] -= torch.from_numpy(shift.astype(np.float32)).to(adapter.selection_bias)
            lowered.update(over.tolist())
    if lowered:
        log.info("load balancing: lowered the selection bias of %d latents above %.1f%% of codes", len(lowered), 100 * cap)
    return len(lowered)
