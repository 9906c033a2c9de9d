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

    def refit(self, x: torch.Tensor, indices: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-squares values on a fixed support: the best non-negative reconstruction of ``x``
        from its latents ``indices`` (n, k), returned re-sorted by descending value.

        The encoder picks the support in one linear pass; solving the small (k, k) system
        ``min ||x - pre_bias - z W_S||`` on it lowers the reconstruction error of codes at no
        change in sparsity. Negative solutions are clipped to 0 (an empty slot).
        """
        atoms = self.W[indices]  # (n, k, d)
        gram = atoms @ atoms.transpose(1, 2)
        gram = gram + ridge * torch.eye(indices.shape[1], dtype=gram.dtype, device=gram.device)
        rhs = (atoms @ (x - self.pre_bias).unsqueeze(2)).squeeze(2)
        values = torch.linalg.solve(gram, rhs).clamp_min(0)
        values, order = torch.sort(values, dim=1, descending=True)
        return values, indices.gather(1, order)

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
