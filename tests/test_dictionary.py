"""The data-driven start of training: a dictionary fitted to a sample, and the adapter made from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_index import CSRConfig
from csr_index import dictionary as dictionary_module
from csr_index.dictionary import dictionary_adapter, fit_dictionary
from csr_index.losses import fvu
from csr_index.train import initial_adapter, train_adapter

D, H, K = 32, 128, 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ls_fvu(xc: np.ndarray, W: np.ndarray, select: np.ndarray | None = None) -> float:
    """Fraction of variance of centred ``xc`` left by least-squares codes on unit rows ``W``."""
    idx, vals = dictionary_module._codes(xc, W, K, select)
    recon = np.einsum("nk,nkd->nd", vals, W[idx])
    return float(((xc - recon) ** 2).sum() / (xc**2).sum())


def relu_fvu(adapter, x: np.ndarray) -> float:
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return float(fvu(xt, adapter.decode(*adapter.encode(xt, K))))


@pytest.fixture(scope="module")
def centred(embeddings):
    x = unit(embeddings(1500, seed=5, clusters=20))
    return x - x.mean(0)


def test_rounds_lower_the_error_of_least_squares_codes(centred):
    rng = np.random.default_rng(0)
    random_rows = unit(rng.standard_normal((H, D)))
    start, _ = fit_dictionary(centred, H, K, 0, None, np.random.default_rng(0))
    fitted, _ = fit_dictionary(centred, H, K, 4, None, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(fitted, axis=1), 1.0, rtol=1e-5)
    errors = ls_fvu(centred, random_rows), ls_fvu(centred, start), ls_fvu(centred, fitted)
    # measured: random rows 0.66, data samples 0.43, four rounds 0.26
    assert errors[2] < errors[1] < errors[0], errors
    assert errors[2] < 0.75 * errors[1], errors


def test_balancing_lowers_the_selection_bias_of_hubs_only(centred):
    _, plain = fit_dictionary(centred, H, K, 4, None, np.random.default_rng(0))
    W, select = fit_dictionary(centred, H, K, 4, 1.0, np.random.default_rng(0))
    assert (plain == 0).all()
    assert (select <= 0).all() and (select < 0).any() and (select == 0).any()


def test_rows_no_code_uses_restart_instead_of_dying(embeddings):
    """More rows than the data can use (60 vectors x 2 latents for 128 rows): the least-squares solve
    leaves unused rows at zero; each restarts as a finite unit vector."""
    x = unit(embeddings(60, seed=2))
    xc = x - x.mean(0)
    W, _ = fit_dictionary(xc, H, 2, 3, None, np.random.default_rng(1))
    assert np.isfinite(W).all()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-5)


def test_wide_code_spaces_start_from_samples_without_rounds(centred, monkeypatch):
    monkeypatch.setattr(dictionary_module, "GRAM_MAX_H", H // 2)
    W, select = fit_dictionary(centred, H, K, 4, 4.0, np.random.default_rng(0))
    best = (W @ unit(centred).T).max(axis=1)  # each row is one of the (normalised) vectors, plus a little noise
    assert (best > 0.99).all() and (select == 0).all()


def test_the_adapter_reproduces_the_least_squares_codes_with_relu_values(centred):
    x = centred + 0.1  # not centred: the adapter's pre_bias must hold the mean
    mean = x.mean(0)
    adapter = dictionary_adapter(x, mean, H, K, 4, None, np.random.default_rng(0))
    np.testing.assert_allclose(adapter.pre_bias.detach().numpy(), mean, rtol=1e-6)
    unscaled = dictionary_adapter(x, mean, H, K, 4, None, np.random.default_rng(0))
    with torch.no_grad():  # the same rows at unit norm with no latent bias: ReLU values are not least squares
        unscaled.W.copy_(torch.nn.functional.normalize(unscaled.W, dim=1))
        unscaled.latent_bias.zero_()
    assert relu_fvu(adapter, x) < 0.9 * relu_fvu(unscaled, x), (relu_fvu(adapter, x), relu_fvu(unscaled, x))


def test_training_from_the_dictionary_beats_a_random_start_in_few_steps(embeddings):
    x = unit(embeddings(1500, seed=7, clusters=20))
    base = dict(steps=20, batch_size=128, warmup_steps=2, seed=0, device="cpu", k=K)
    fitted = train_adapter(x, D, H, CSRConfig(**base))
    random = train_adapter(x, D, H, CSRConfig(**base, init="random"))
    assert relu_fvu(fitted.adapter, x) < 0.8 * relu_fvu(random.adapter, x)


def test_initial_adapter_follows_the_config(corpus):
    x = unit(np.asarray(corpus))
    rng = np.random.default_rng(0)
    random = initial_adapter(x, D, H, CSRConfig(init="random", pre_bias_init="zero").resolve(D, H, K), rng)
    assert (random.pre_bias == 0).all() and (random.latent_bias == 0).all()
    fitted = initial_adapter(x, D, H, CSRConfig().resolve(D, H, K), rng)
    assert not torch.equal(fitted.W, random.W) and (fitted.latent_bias != 0).all()
