"""Every hyper-parameter of the CSR adapter and its training, with defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["CSRConfig"]


DEFAULT_K = 32
"""Active latents per code when neither the index nor the config says."""

MIN_DEFAULT_PREFIX = 8
"""Default prefixes have at least this many latents: on SciFact, training 2- and 4-latent
prefixes cost a k=8 model 0.02-0.03 NDCG@10, while 8 and 16 raised k=32's code score."""


LEGACY: dict[str, Any] = {"prefix_distill": True, "decay": "linear", "init": "random", "balance_settle": False}
"""Fields added with the fast build, at the values that describe configs written before them."""


@dataclass
class CSRConfig:
    """Hyper-parameters of a CSR adapter. Defaults follow the paper where it is sound.

    Only ``h`` and ``k`` shape the model; everything else shapes training. An index or
    encoder fills them in with :meth:`resolve`; giving them both here and to the index
    with different values is an error, not a silent override.
    """

    h: int | None = None
    """Width of the sparse code space; ``None`` means 4 * d (the paper's default)."""
    k: int | None = None
    """Active latents per code (TopK); queries may use any k' <= k. ``None`` means 32."""
    k_aux: int = 512
    """Dead latents used by the AuxK loss; capped at h / 2."""
    multi_k_factor: int = 4
    """The second TopK term reconstructs with ``multi_k_factor * k`` latents (paper: 4)."""
    multi_k_weight: float = 1 / 4
    """Weight of that second term (paper: 1/8; 1/4 raised the code-only scores of the fast schedule)."""
    nested_k: tuple[int, ...] | None = None
    """Smaller budgets k' < k whose code prefixes (the k' largest entries) are also trained to
    reconstruct (and, with ``prefix_distill``, to rank): one model for every query budget (adaptive k).
    ``None`` (default): those of (k // 4, k // 2) with at least ``MIN_DEFAULT_PREFIX`` latents;
    ``()``: the single-k objective. See ``prefix_budgets``."""
    nested_weight: float | None = None
    """Weight of each prefix's terms relative to the full code's; ``None``: 1 / len(nested_k)
    (the prefixes share one full weight)."""
    prefix_distill: bool = False
    """Also apply the distillation term to each prefix code (the long schedule does; on SciFact it
    cost the short schedule time and no quality)."""
    beta: float = 0.0
    """Weight of the AuxK loss, which trains dead latents on the residual (paper: 1/32, the long
    schedule). Off by default: the data-driven start restarts unused rows and the load balancing
    keeps latents in use (0 of 1,536 unused on pypi-100k, 2 on SciFact)."""
    contrastive: str = "distill"
    """Unsupervised contrastive term. 'distill': the code cosines of a batch must rank its other
    vectors as their dense cosines do (relational distillation). 'infonce': the paper's in-batch
    InfoNCE with each vector as its own positive, which only spreads codes apart. With
    ``pairs`` the term is always supervised InfoNCE."""
    gamma: float = 1.0
    """Weight of the contrastive term, relative to the normalised reconstruction loss."""
    temperature: float = 0.2
    """InfoNCE temperature on L2-normalised codes (paper: 0.2)."""
    distill_temperature: float = 0.1
    """Temperature of both the dense (teacher) and the code (student) similarities in 'distill'."""
    dead_after: int = 20_000
    """A latent is dead (for AuxK) when it has not fired for this many training samples."""
    lr: float = 3e-3
    """Adam learning rate (peak, after warm-up)."""
    adam_eps: float = 6.25e-10
    """Adam epsilon (paper)."""
    batch_size: int = 128
    """Training batch size; also the pool of in-batch negatives. Small batches make the most of a
    short schedule (pypi-100k, from the dictionary start: 800 steps of 128 gave recall@10 0.960 in
    the time 600 steps of 256 gave 0.958)."""
    max_train: int | None = 100_000
    """Train on a random sample of at most this many vectors (``None``: all)."""
    steps: int | None = 800
    """Optimiser steps; ``None`` chooses from the number of training vectors (see ``train_steps``)."""
    epochs: float = 20.0
    """Passes over the data when ``steps`` is None, clamped to [min_steps, max_steps]."""
    min_steps: int = 2000
    max_steps: int = 5000
    warmup_steps: int = 20
    """Linear learning-rate warm-up; the rate then decays to 0 (see ``decay``)."""
    decay: str = "cosine"
    """Learning-rate decay after warm-up: 'cosine' or 'linear' (the long schedule)."""
    init: str = "dictionary"
    """How training starts. 'dictionary': from a dictionary fitted to a sample of the data (see
    :mod:`csr_index.dictionary`), so the steps polish instead of un-learning random rows;
    'random': random unit rows (the long schedule)."""
    init_sample: int = 16_384
    """Vectors the starting dictionary is fitted on."""
    init_rounds: int = 4
    """Alternating rounds (codes, then rows by least squares) of the starting dictionary."""
    pre_bias_init: str = "mean"
    """'mean' starts ``pre_bias`` at the data mean (as EleutherAI sparsify); 'zero' as the paper."""
    refit: bool = True
    """Encoding: after the encoder picks each code's k latents, solve for their values by
    (ridge) least squares on that support and clip negative solutions to 0 — not a true
    non-negative least-squares solve —, which lowers the reconstruction error of the codes."""
    idf_weights: bool = True
    """Code x code scoring weighs each latent by sqrt(IDF) over the training codes (hub latents count less)."""
    balance_cap: float | None = 4.0
    """Soft-capped load balancing of the TopK support, against "hub" latents that fire on most
    vectors and make every posting-list search read most of the corpus. A latent active in more
    than ``balance_cap * k / h`` of a training batch's codes (``balance_cap`` times its share
    under uniform use; 4 -> 8.3 % of vectors at k = 32, h = 1536) has its ``selection_bias``
    lowered by ``balance_step``; every other latent's bias relaxes back towards 0 (never above).
    The bias only changes which latents are picked, not their values, and it is saved with the
    adapter, so documents and queries pick supports the same way. ``None``: plain TopK.
    On pypi-100k the busiest latent fell from 60 % to 9 % of documents and shortlist search read
    2.3x fewer postings at equal recall; smaller caps (2, or uniform use) cost code-score fidelity."""
    balance_step: float = 1e-3
    """Step of the selection-bias update per training batch (see ``balance_cap``)."""
    balance_settle: bool = True
    """After training, lower the selection bias of every latent still above the cap on a sample
    of the training vectors, just enough that it is not (see :mod:`csr_index.balance`): the
    batch-wise update holds the cap only on average over noisy batches."""
    seed: int = 0
    device: str | None = None
    """'cpu', 'cuda', ...; ``None`` picks CUDA when available."""

    def __post_init__(self) -> None:
        if self.nested_k is not None:
            self.nested_k = tuple(int(v) for v in self.nested_k)
        if any(v < 1 for v in self.nested_k or ()):
            raise ValueError(f"CSRConfig.nested_k must hold positive budgets, got {self.nested_k}")
        if self.nested_weight is not None and not self.nested_weight >= 0:
            raise ValueError(f"CSRConfig.nested_weight must be >= 0 or None, got {self.nested_weight!r}")
        for name in ("steps", "min_steps", "max_steps", "batch_size", "max_train"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"CSRConfig.{name} must be a positive integer, got {value!r}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"CSRConfig.min_steps ({self.min_steps}) exceeds max_steps ({self.max_steps})")
        for name, allowed in (("decay", ("cosine", "linear")), ("init", ("dictionary", "random"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"CSRConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, least in (("init_sample", 1), ("init_rounds", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                kind = "positive" if least else "non-negative"
                raise ValueError(f"CSRConfig.{name} must be a {kind} integer, got {value!r}")
        if self.contrastive not in ("distill", "infonce"):
            raise ValueError(f"CSRConfig.contrastive must be 'distill' or 'infonce', got {self.contrastive!r}")
        if self.balance_cap is not None and not self.balance_cap > 0:
            raise ValueError(f"CSRConfig.balance_cap must be > 0 or None, got {self.balance_cap!r}")
        for name in ("balance_step",):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CSRConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "temperature", "distill_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CSRConfig.{name} must be > 0, got {getattr(self, name)!r}")

    @classmethod
    def long(cls, **overrides: Any) -> "CSRConfig":
        """The long schedule (the default before the fast build): random start, 2,000-5,000 Adam
        steps of batch 1,024 at lr 1e-3 with linear decay, AuxK, the 4k term at 1/8 and distillation
        of every prefix. About 0.1-0.3 s per step on 2 CPU cores (20-40x the default's training time). On
        SciFact and pypi-100k the default search is as good with either; the long schedule's
        code-only score is ~0.02 NDCG@10 higher on SciFact (see the README's training section).
        ``overrides`` set any other field."""
        base = dict(init="random", steps=None, batch_size=1024, lr=1e-3, warmup_steps=100, decay="linear",
                    beta=1 / 32, prefix_distill=True, multi_k_weight=1 / 8)
        return cls(**{**base, **overrides})

    def resolve(self, d: int, h: int | None = None, k: int | None = None) -> "CSRConfig":
        """A copy with ``h`` and ``k`` filled in for d-dimensional inputs: the given values,
        else this config's, else 4 * d and 32. ValueError when both are given and differ."""
        from .validation import check_positive

        def pick(name: str, given: int | None, default: int) -> int:
            mine = getattr(self, name)
            if given is not None and mine is not None and given != mine:
                raise ValueError(f"{name}={given} conflicts with CSRConfig({name}={mine}); give it once")
            return given if given is not None else (mine if mine is not None else default)

        h_final = check_positive(pick("h", h, 4 * d), "h", 1 << 32)
        k_final = check_positive(pick("k", k, DEFAULT_K), "k", h_final)
        return replace(self, h=h_final, k=k_final)

    def prefix_budgets(self, k: int | None = None) -> tuple[int, ...]:
        """The prefix budgets trained besides ``k`` (default ``self.k``), ascending, each in [1, k)."""
        k = k if k is not None else (self.k if self.k is not None else DEFAULT_K)
        if self.nested_k is None:
            budgets = tuple(b for b in (k // 4, k // 2) if b >= MIN_DEFAULT_PREFIX)
        else:
            budgets = self.nested_k
        return tuple(sorted({b for b in budgets if 1 <= b < k}))

    def train_steps(self, n: int) -> int:
        """Number of optimiser steps for ``n`` training vectors."""
        if self.steps is not None:
            return self.steps
        per_epoch = max(1, -(-n // self.batch_size))
        return int(min(self.max_steps, max(self.min_steps, round(self.epochs * per_epoch))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CSRConfig":
        """The config a manifest recorded. Fields it lacks (it predates them) take the values that
        describe how it was trained (``LEGACY``), not today's defaults."""
        data = {**LEGACY, **data}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown CSRConfig fields: {sorted(unknown)}")
        return cls(**data)
