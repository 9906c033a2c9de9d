"""Fitting a :class:`SparseAdapter` to dense vectors (CSR training loop)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import CSRConfig
from .balance import firing_rates, settle_selection_bias, update_selection_bias
from .dictionary import dictionary_adapter
from .losses import auxk_loss, contrastive_loss, distillation_loss, distillation_targets, fvu
from .model import SparseAdapter
from .progress import progress_bar
from .validation import sample_rows

__all__ = ["TrainResult", "train_adapter", "initial_adapter", "resolve_device", "update_selection_bias", "firing_rates"]

log = logging.getLogger(__name__)

SETTLE_SAMPLE = 8192
"""Training vectors on which the load-balancing cap is made to hold once training ends (fewer
when h is so large that their (m, h) pre-activations would pass SETTLE_MAX_ENTRIES)."""
SETTLE_MAX_ENTRIES = 1 << 26


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


def _schedule(steps: int, warmup: int, decay: str) -> Callable[[int], float]:
    """Learning-rate factor of each step: linear warm-up, then cosine or linear decay to 0."""
    def factor(s: int) -> float:
        done = min(1.0, s / max(1, steps))
        tail = 0.5 * (1 + math.cos(math.pi * done)) if decay == "cosine" else max(0.0, (steps - s) / max(1, steps - warmup))
        return min((s + 1) / warmup, tail)
    return factor


def _prefix_reconstructions(adapter: SparseAdapter, values: torch.Tensor, indices: torch.Tensor,
                            cuts: list[int]) -> list[torch.Tensor]:
    """Reconstructions from the first c slots of each code, for every c in ``cuts`` (ascending): one
    ``embedding_bag`` over the slot ranges between cuts, then running sums (one pass, not one per cut)."""
    n = values.shape[0]
    starts = torch.tensor([0, *cuts[:-1]], device=values.device)
    offsets = (torch.arange(n, device=values.device).unsqueeze(1) * cuts[-1] + starts).reshape(-1)
    parts = F.embedding_bag(indices[:, : cuts[-1]].reshape(-1), adapter.W, offsets,
                            per_sample_weights=values[:, : cuts[-1]].reshape(-1), mode="sum")
    running = parts.view(n, len(cuts), -1).cumsum(1) + adapter.pre_bias
    return list(running.unbind(1))


def initial_adapter(x: np.ndarray, d: int, h: int, cfg: CSRConfig, rng: np.random.Generator) -> SparseAdapter:
    """The adapter training starts from: a dictionary fitted to a sample of ``x``
    (``init="dictionary"``, see :mod:`csr_index.dictionary`) or random unit rows."""
    if cfg.pre_bias_init not in ("mean", "zero"):
        raise ValueError(f"pre_bias_init must be 'mean' or 'zero', got {cfg.pre_bias_init!r}")
    mean = x.mean(0) if cfg.pre_bias_init == "mean" else np.zeros(d, np.float32)
    if cfg.init == "dictionary":
        rows = sample_rows(len(x), cfg.init_sample, rng)
        sample = x if rows is None else x[rows]
        return dictionary_adapter(sample, mean, h, cfg.k, cfg.init_rounds, cfg.balance_cap, rng)
    adapter = SparseAdapter(d, h, seed=cfg.seed)
    adapter.pre_bias.data = torch.from_numpy(np.asarray(mean, np.float32))
    return adapter


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

    Training starts from :func:`initial_adapter` and takes ``config.train_steps`` Adam steps on
    the normalised reconstruction of the k-code, of its prefixes and of the ``multi_k_factor * k``
    code, the AuxK term (when ``beta`` > 0) and a contrastive term. ``pairs`` = (queries,
    positives), two (m, d) arrays: the contrastive term then pulls each query's code towards its
    positive's code (supervised InfoNCE) and the queries join the reconstruction batches. Without
    pairs it is ``config.contrastive``: relational distillation (default) or the paper's InfoNCE.
    ``callback(step, adapter)`` runs every ``callback_every`` steps (e.g. to draw a quality curve);
    the adapter is in eval mode during the call.
    """
    t0 = time.perf_counter()
    cfg = config.resolve(d, h)
    k = cfg.k
    k_multi = min(h, cfg.multi_k_factor * k) if cfg.multi_k_weight > 0 else k
    prefixes = cfg.prefix_budgets(k)  # Matryoshka budgets, and the weight of each one's terms
    w_prefix = cfg.nested_weight if cfg.nested_weight is not None else 1 / max(len(prefixes), 1)
    prefixes = prefixes if w_prefix > 0 else ()  # weight 0: the single-k objective, computed as such
    cuts = sorted({*prefixes, k, k_multi})
    k_aux = min(cfg.k_aux, h // 2)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    train_x = x if pairs is None else np.concatenate([x, pairs[0]])
    adapter = initial_adapter(train_x, d, h, cfg, rng)
    adapter.to(device).train()
    init_seconds = time.perf_counter() - t0

    # the training set stays in host memory; each batch is copied to the device when drawn
    n = train_x.shape[0]
    if pairs is not None:
        pq = np.ascontiguousarray(pairs[0], dtype=np.float32)
        pp = np.ascontiguousarray(pairs[1], dtype=np.float32)
    steps = cfg.train_steps(n)
    batch = min(cfg.batch_size, n)
    opt = torch.optim.Adam(adapter.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps, min(cfg.warmup_steps, steps // 10 + 1), cfg.decay))
    # samples since each latent last fired; only training batches advance it
    since_fired = torch.zeros(h, dtype=torch.long, device=device)
    order = rng.permutation(n)
    cursor = 0
    history: list[dict[str, float]] = []
    log_every = max(1, steps // 20)
    bar = progress_bar(range(steps), progress, desc="training CSR adapter", unit="step")
    for step in bar:
        if cursor + batch > n:
            order, cursor = rng.permutation(n), 0
        xb = torch.from_numpy(train_x[order[cursor : cursor + batch]]).to(device)
        cursor += batch

        # (x - pre_bias) W^T with the bias term as one (h,) row: its gradient is a vector-matrix
        # product, not a second (batch, h) x (h, d) one
        pre = torch.addmm(adapter.latent_bias - adapter.W @ adapter.pre_bias, xb, adapter.W.T)
        values_all, indices_all = adapter.topk(pre, k_multi)  # the support honours the selection bias
        values, indices = values_all[:, :k], indices_all[:, :k]
        recon = dict(zip(cuts, _prefix_reconstructions(adapter, values_all, indices_all, cuts)))
        loss_k = fvu(xb, recon[k])
        loss = loss_k
        if k_multi > k:
            loss = loss + cfg.multi_k_weight * fvu(xb, recon[k_multi])
        for kp in prefixes:  # Matryoshka-style: every prefix of the code must reconstruct too
            loss = loss + w_prefix * fvu(xb, recon[kp])
        dead = since_fired > cfg.dead_after
        if cfg.beta > 0:
            loss = loss + cfg.beta * auxk_loss(adapter, pre, dead, (xb - recon[k]).detach(), k_aux)
        if cfg.gamma > 0:
            if pairs is not None:
                j = rng.integers(0, pq.shape[0], size=min(batch, pq.shape[0]))
                qb, pb = torch.from_numpy(pq[j]).to(device), torch.from_numpy(pp[j]).to(device)
                cl = contrastive_loss(adapter.encode(qb, k), adapter.encode(pb, k), h, cfg.temperature)
            elif cfg.contrastive == "distill":
                teacher = distillation_targets(xb, cfg.distill_temperature)
                cl = distillation_loss((values, indices), teacher, h, cfg.distill_temperature)
                for kp in prefixes if cfg.prefix_distill else ():
                    prefix = (values[:, :kp], indices[:, :kp])
                    cl = cl + w_prefix * distillation_loss(prefix, teacher, h, cfg.distill_temperature)
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
    if cfg.balance_cap is not None and cfg.balance_settle:  # the cap holds on the data, not only on average
        rows = sample_rows(n, max(1, min(SETTLE_SAMPLE, SETTLE_MAX_ENTRIES // h)), rng)
        sample = train_x if rows is None else train_x[rows]
        settle_selection_bias(adapter, torch.from_numpy(np.ascontiguousarray(sample)), k, cfg.balance_cap * k / h)
    dead_fraction = float((since_fired > cfg.dead_after).float().mean())
    seconds = time.perf_counter() - t0
    log.info("trained in %.1f s (start %.1f s, %d steps)", seconds, init_seconds, steps)
    return TrainResult(
        adapter=adapter,
        steps=steps,
        seconds=seconds,
        fvu=history[-1]["fvu"] if history else float("nan"),
        dead_fraction=dead_fraction,
        history=history,
    )
