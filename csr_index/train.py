"""Fitting a :class:`SparseAdapter` to dense vectors (CSR training loop)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import CSRConfig
from .losses import auxk_loss, contrastive_loss, distillation_loss, fvu
from .model import SparseAdapter
from .progress import progress_bar

__all__ = ["TrainResult", "train_adapter", "resolve_device", "update_selection_bias", "firing_rates"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What training produced: the adapter, per-latent fire counts and a loss history."""

    adapter: SparseAdapter
    steps: int
    seconds: float
    fvu: float
    dead_fraction: float
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str | None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def train_adapter(
    x: np.ndarray,
    d: int,
    h: int,
    config: CSRConfig,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = False,
    callback: Callable[[int, SparseAdapter], None] | None = None,
    callback_every: int = 0,
) -> TrainResult:
    """Train a CSR adapter on float32 ``x`` (n, d); returns it in eval mode, on CPU.

    ``pairs`` = (queries, positives), two (m, d) arrays: the contrastive term then
    pulls each query's code towards its positive's code (supervised InfoNCE) and
    the queries join the reconstruction batches. Without pairs it is
    ``config.contrastive``: relational distillation (default) or the paper's InfoNCE.
    ``callback(step, adapter)`` runs every ``callback_every`` steps (e.g. to draw a
    quality curve); the adapter is in eval mode during the call.
    """
    cfg = config.resolve(d, h)
    k = cfg.k
    k_multi = min(h, cfg.multi_k_factor * k)
    prefixes = cfg.prefix_budgets(k)  # Matryoshka budgets, and the weight of each one's terms
    w_prefix = cfg.nested_weight if cfg.nested_weight is not None else 1 / max(len(prefixes), 1)
    k_aux = min(cfg.k_aux, h // 2)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    adapter = SparseAdapter(d, h, seed=cfg.seed)
    train_x = x if pairs is None else np.concatenate([x, pairs[0]])
    if cfg.pre_bias_init == "mean":
        adapter.pre_bias.data = torch.from_numpy(train_x.mean(0))
    elif cfg.pre_bias_init != "zero":
        raise ValueError(f"pre_bias_init must be 'mean' or 'zero', got {cfg.pre_bias_init!r}")
    adapter.to(device).train()

    # the training set stays in host memory; each batch is copied to the device when drawn
    n = train_x.shape[0]
    if pairs is not None:
        pq = np.ascontiguousarray(pairs[0], dtype=np.float32)
        pp = np.ascontiguousarray(pairs[1], dtype=np.float32)
    steps = cfg.train_steps(n)
    batch = min(cfg.batch_size, n)
    opt = torch.optim.Adam(adapter.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    warmup = min(cfg.warmup_steps, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    # samples since each latent last fired; only training batches advance it
    since_fired = torch.zeros(h, dtype=torch.long, device=device)
    order = rng.permutation(n)
    cursor = 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    log_every = max(1, steps // 20)
    bar = progress_bar(range(steps), progress, desc="training CSR adapter", unit="step")
    for step in bar:
        if cursor + batch > n:
            order, cursor = rng.permutation(n), 0
        xb = torch.from_numpy(train_x[order[cursor : cursor + batch]]).to(device)
        cursor += batch

        pre = adapter.preactivations(xb)
        values, indices = adapter.topk(pre, k)  # the support honours the selection bias
        x_hat = adapter.decode(values, indices)
        loss_k = fvu(xb, x_hat)
        loss = loss_k
        if cfg.multi_k_weight > 0 and k_multi > k:
            values_m, indices_m = adapter.topk(pre, k_multi)
            loss = loss + cfg.multi_k_weight * fvu(xb, adapter.decode(values_m, indices_m))
        for kp in prefixes:  # Matryoshka-style: every prefix of the code must reconstruct too
            loss = loss + w_prefix * fvu(xb, adapter.decode(values[:, :kp], indices[:, :kp]))
        dead = since_fired > cfg.dead_after
        if cfg.beta > 0:
            loss = loss + cfg.beta * auxk_loss(adapter, pre, dead, (xb - x_hat).detach(), k_aux)
        if cfg.gamma > 0:
            if pairs is not None:
                j = rng.integers(0, pq.shape[0], size=min(batch, pq.shape[0]))
                qb, pb = torch.from_numpy(pq[j]).to(device), torch.from_numpy(pp[j]).to(device)
                cl = contrastive_loss(adapter.encode(qb, k), adapter.encode(pb, k), h, cfg.temperature)
            elif cfg.contrastive == "distill":
                cl = distillation_loss((values, indices), xb, h, cfg.distill_temperature)
                for kp in prefixes:
                    prefix = (values[:, :kp], indices[:, :kp])
                    cl = cl + w_prefix * distillation_loss(prefix, xb, h, cfg.distill_temperature)
            else:
                cl = contrastive_loss((values, indices), (values, indices), h, cfg.temperature)
            loss = loss + cfg.gamma * cl
        else:
            cl = torch.zeros(())

        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

        with torch.no_grad():
            if cfg.balance_cap is not None:  # soft-capped load balancing of the support
                update_selection_bias(adapter, firing_rates(values, indices, h), k, cfg)
            fired = torch.zeros(h, dtype=torch.bool, device=device)
            fired[indices[values > 0]] = True
            since_fired += batch
            since_fired[fired] = 0

        if step % log_every == 0 or step == steps - 1:
            rec = {
                "step": step,
                "loss": float(loss.detach()),
                "fvu": float(loss_k.detach()),
                "contrastive": float(cl.detach()),
                "dead_fraction": float(dead.float().mean()),
            }
            history.append(rec)
            bar.set_postfix(fvu=f"{rec['fvu']:.3f}", dead=f"{rec['dead_fraction']:.1%}")
            log.info(
                "step %d/%d loss %.4f fvu %.4f contrastive %.4f dead %.2f%%",
                step + 1, steps, rec["loss"], rec["fvu"], rec["contrastive"], 100 * rec["dead_fraction"],
            )
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"training diverged at step {step} (loss {rec['loss']})")
        if callback is not None and callback_every and (step + 1) % callback_every == 0:
            adapter.eval()
            callback(step + 1, adapter)
            adapter.train()
    bar.close()
    adapter.eval().cpu()
    dead_fraction = float((since_fired > cfg.dead_after).float().mean())
    return TrainResult(
        adapter=adapter,
        steps=steps,
        seconds=time.perf_counter() - t0,
        fvu=history[-1]["fvu"],
        dead_fraction=dead_fraction,
        history=history,
    )

