"""Loss terms of CSR training: normalised reconstruction, AuxK, and non-negative contrastive."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import SparseAdapter

__all__ = ["fvu", "auxk_loss", "code_cosines", "contrastive_loss", "distillation_targets", "distillation_loss"]


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: ``||x - x_hat||^2 / ||x - mean(x)||^2`` over the batch.

    Unlike the paper's raw MSE its scale does not depend on the norm or the
    dimension of the inputs, so one ``gamma`` suits every embedding model.
    """
    total = (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
    return (x - x_hat).pow(2).sum() / total


def auxk_loss(
    adapter: SparseAdapter, pre: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor, k_aux: int
) -> torch.Tensor:
    """Reconstruct the TopK residual from the ``k_aux`` largest *dead* latents (Gao et al., 2024).

    ``pre`` is never modified: dead latents are selected out of place, so the
    other TopK terms still see the original pre-activations.
    """
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux <= 0:
        return pre.new_zeros(())
    masked = torch.where(dead, pre, torch.full_like(pre, float("-inf")))
    values, indices = adapter.topk(masked, min(k_aux, n_dead))
    residual_hat = adapter.decode_residual(values, indices)
    return fvu(residual, residual_hat)


def code_cosines(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], h: int
) -> torch.Tensor:
    """Cosine similarities (na, nb) between two batches of sparse codes given as (values, indices).

    Costs na * k * nb instead of the na * h * nb of a dense product.
    """
    va = F.normalize(a[0], dim=-1)
    vb = F.normalize(b[0], dim=-1)
    zb_t = vb.new_zeros(vb.shape[0], h).scatter(1, b[1], vb).T.contiguous()
    return F.embedding_bag(a[1], zb_t, per_sample_weights=va, mode="sum")


def contrastive_loss(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    h: int,
    temperature: float,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric in-batch InfoNCE between L2-normalised non-negative sparse codes ``a`` and ``b``.

    Codes are (values, indices) pairs of shape (n, k). Row i of ``a`` is paired
    with row i of ``b``; every other row is a negative. ``targets`` (n, n), rows
    summing to 1, replaces the identity pairing with soft targets.
    """
    logits = code_cosines(a, b, h) / temperature
    if targets is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    return 0.5 * (
        -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
        - (targets.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    )


def distillation_targets(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher of :func:`distillation_loss` for a batch ``x`` (n, d): softmax_j(cos(x_i, x_j) / t)
    over j != i, (n, n) with zeros on the diagonal. Computed once per batch, shared by every code
    (prefix) the batch distils into."""
    xn = F.normalize(x, dim=-1)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.softmax((xn @ xn.T / temperature).masked_fill(eye, float("-inf")), dim=1)


def distillation_loss(
    codes: tuple[torch.Tensor, torch.Tensor], teacher: torch.Tensor, h: int, temperature: float
) -> torch.Tensor:
    """Relational distillation: code cosines should rank the *other* batch items as dense cosines do.

    For each row i, cross-entropy between the teacher's softmax_j(cos(x_i, x_j) / t)
    (:func:`distillation_targets`) and softmax_j(cos(z_i, z_j) / t) over j != i. The pair (i, i) is
    left out: a vector is its own nearest neighbour, which would otherwise swamp the target.
    """
    eye = torch.eye(teacher.shape[0], dtype=torch.bool, device=teacher.device)
    student = (code_cosines(codes, codes, h) / temperature).masked_fill(eye, float("-inf"))
    log_p = F.log_softmax(student, dim=1).masked_fill(eye, 0.0)
    return -(teacher * log_p).sum(1).mean()
