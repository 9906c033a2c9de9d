"""The CSR sparse adapter: a tied-weight TopK autoencoder (Beyond Matryoshka, sec. 3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SparseAdapter"]


class SparseAdapter(nn.Module):
    """Maps dense vectors (…, d) to non-negative k-sparse codes in R^h and back.

    ``encode(x) = relu(topk((x - pre_bias) @ W.T + latent_bias, k))`` and
    ``decode(z) = z @ W + pre_bias``; one weight ``W`` (h, d) is shared by both.
    Codes are returned as (values, indices) of shape (n, k), never as a dense (n, h) matrix.

    ``selection_bias`` (h), a buffer, shifts only *which* latents the TopK picks, never their
    values: the support is ``topk(pre + selection_bias)``, the values ``relu(pre)`` there. It is
    set by training's load balancing (``CSRConfig.balance_cap``, on by default) to keep hub
    latents from firing on most vectors, and is zero without it (plain TopK). Indexes saved
    before it existed load with a zero bias.
    """

    def __init__(self, d: int, h: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(h, d, generator=gen)
        self.W = nn.Parameter(w / w.norm(dim=1, keepdim=True))
        self.pre_bias = nn.Parameter(torch.zeros(d))
        self.latent_bias = nn.Parameter(torch.zeros(h))
        # per-latent weight of code x code scoring (sqrt of IDF over the training codes); not trained
        self.register_buffer("latent_weight", torch.ones(h))
        # added to the pre-activations only to choose the support (load balancing); not trained by gradients
        self.register_buffer("selection_bias", torch.zeros(h))

    @property
    def d(self) -> int:
        return self.W.shape[1]

    @property
    def h(self) -> int:
        return self.W.shape[0]

    def preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """Dense pre-activations (n, h), before TopK and ReLU."""
        return (x - self.pre_bias) @ self.W.T + self.latent_bias

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` (n, h): the dense query side of asymmetric scoring."""
        return x @ self.W.T

    def topk(self, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK then ReLU of pre-activations: the k latents of largest ``pre + selection_bias``,
        in that order (so the first k' < k entries are the k'-code), with values ``relu(pre)``
        there; values (n, k), indices (n, k). With a zero selection bias the values are descending.
        """
        if not bool(self.selection_bias.any()):
            values, indices = torch.topk(pre, k, dim=-1, sorted=True)
            return torch.relu(values), indices
        _, indices = torch.topk(pre + self.selection_bias, k, dim=-1, sorted=True)
        return torch.relu(pre.gather(-1, indices)), indices

    def encode(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k-sparse codes of ``x``: values (n, k) >= 0 and latent indices (n, k), ordered by
        selection score (descending values when the selection bias is zero). The one place
        that picks a code's support: training, indexing and queries all go through it.
        """
        return self.topk(self.preactivations(x), k)

    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W W^T`` (h, h) and ``W pre_bias`` (h,): the tables :meth:`support_gram`,
        :meth:`refit` and :meth:`code_norms` read; computed once per adapter by callers
        that encode many batches."""
        return self.W @ self.W.T, self.W @ self.pre_bias

    def support_gram(self, indices: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
        """``W_S W_S^T`` (n, k, k) of each code's support ``indices`` (n, k): gathered from
        ``gram`` (:meth:`gram`) when given (n * k * k reads), else from the atoms W[indices]."""
        if gram is None:
            atoms = self.W[indices]
            return atoms @ atoms.transpose(1, 2)
        n, k = indices.shape
        flat = (indices.unsqueeze(2) * gram.shape[0] + indices.unsqueeze(1)).reshape(-1)
        return gram.reshape(-1).index_select(0, flat).view(n, k, k)

    def refit(
        self, pre: torch.Tensor, indices: torch.Tensor, g: torch.Tensor, ridge: float = 1e-4
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Least-squares values on a fixed support: (values, indices, order), re-sorted by
        descending value, ``order`` the permutation applied.

        The encoder picks each code's k latents ``indices`` (n, k) in one linear pass; this
        solves ``min_z ||x - pre_bias - z W_S||^2`` (ridge-regularised) on that support and
        clips negative solutions to 0 (an empty slot): an unconstrained solve, then a clip,
        not a non-negative least-squares solver. The normal equations need only the
        pre-activations ``pre`` (n, h) — ``W_S (x - pre_bias) = (pre - latent_bias)_S`` —
        and ``g`` = ``W_S W_S^T`` (:meth:`support_gram`).
        """
        eye = torch.eye(indices.shape[1], dtype=g.dtype, device=g.device)
        rhs = (pre.gather(1, indices) - self.latent_bias[indices]).unsqueeze(2)
        factor, info = torch.linalg.cholesky_ex(g + ridge * eye)
        if bool((info == 0).all()):
            values = torch.cholesky_solve(rhs, factor).squeeze(2)
        else:  # a numerically singular support: fall back to LU
            values = torch.linalg.solve(g + ridge * eye, rhs).squeeze(2)
        values, order = torch.sort(values.clamp_min(0), dim=1, descending=True)
        return values, indices.gather(1, order), order

    def code_norms(self, values: torch.Tensor, indices: torch.Tensor, g: torch.Tensor,
                   w_bias: torch.Tensor) -> torch.Tensor:
        """``||decode(z)||`` (n,) without decoding: ``z_S^T g z_S + 2 z_S . (W pre_bias)_S +
        ||pre_bias||^2``, with ``g`` = ``W_S W_S^T`` in the order of ``indices``."""
        quad = (values.unsqueeze(1) @ g @ values.unsqueeze(2)).reshape(-1)
        total = quad + 2 * (values * w_bias[indices]).sum(1) + self.pre_bias.pow(2).sum()
        return total.clamp_min(0).sqrt()

    def set_latent_weights(self, indices: torch.Tensor, values: torch.Tensor, n: int) -> None:
        """Set ``latent_weight`` to sqrt(IDF) of each latent over ``n`` training codes.

        A latent firing in a large share of codes (a "hub") says little about which
        vectors are alike; IDF weighting, as in text retrieval, lowers its say in code
        x code scores. sqrt because the weight applies to both sides of the product.
        """
        df = torch.zeros(self.h, dtype=torch.float64)
        df.index_add_(0, indices[values > 0].reshape(-1).cpu(), torch.ones(int((values > 0).sum()), dtype=torch.float64))
        idf = torch.log((n + 1) / (df + 1))
        self.latent_weight.copy_(idf.sqrt().to(self.latent_weight))

    def densify(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Scatter sparse codes into a dense (n, h) matrix (differentiable in ``values``)."""
        z = values.new_zeros(values.shape[0], self.h)
        return z.scatter(1, indices, values)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Reconstruct (n, d) from sparse codes: ``z @ W + pre_bias``."""
        return self.decode_residual(values, indices) + self.pre_bias

    def decode_residual(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``z @ W`` without the bias; reads only the k active rows of W per code."""
        return F.embedding_bag(indices, self.W, per_sample_weights=values, mode="sum")
