"""Training the sparse adapter: determinism, the loss terms, step schedule, and that it learns."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csr_index import CSRConfig, CSRIndex, SparseAdapter
from csr_index.losses import auxk_loss, code_cosines, contrastive_loss, fvu
from csr_index.train import resolve_device, train_adapter

D, H, K = 32, 128, 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def state(adapter: SparseAdapter) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().copy() for name, t in adapter.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


def reconstruction_fvu(adapter: SparseAdapter, x: np.ndarray, k: int) -> float:
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return float(fvu(xt, adapter.decode(*adapter.encode(xt, k))))


# ------------------------------------------------------------------ determinism
def test_same_seed_gives_bitwise_identical_weights(corpus, tiny_config):
    a = CSRIndex(D, k=K, h=H, config=tiny_config(seed=3)).train(corpus)
    b = CSRIndex(D, k=K, h=H, config=tiny_config(seed=3)).train(corpus)
    assert_same_state(state(a.adapter), state(b.adapter))
    assert a.train_stats["fvu"] == b.train_stats["fvu"]


def test_another_seed_gives_other_weights(corpus, tiny_config):
    a = CSRIndex(D, k=K, h=H, config=tiny_config(seed=0)).train(corpus)
    b = CSRIndex(D, k=K, h=H, config=tiny_config(seed=1)).train(corpus)
    assert not np.array_equal(state(a.adapter)["W"], state(b.adapter)["W"])


# ---------------------------------------------------------------------- losses
@pytest.mark.parametrize("c", [1e-3, 0.5, 7.0, 1e3])
def test_fvu_is_scale_invariant(c):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, D, generator=gen) + 3.0
    x_hat = x + 0.3 * torch.randn(64, D, generator=gen)
    np.testing.assert_allclose(float(fvu(c * x, c * x_hat)), float(fvu(x, x_hat)), rtol=1e-5)


def test_fvu_reference_points():
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(1))
    assert float(fvu(x, x)) == 0.0
    mean = x.mean(dim=0).expand_as(x)
    np.testing.assert_allclose(float(fvu(x, mean)), 1.0, rtol=1e-6)  # predicting the mean explains nothing


def _adapter_and_batch(seed=0, n=40):
    adapter = SparseAdapter(D, H, seed=seed)
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed + 1))
    return adapter, x


def test_auxk_loss_does_not_mutate_pre():
    adapter, x = _adapter_and_batch()
    pre = adapter.preactivations(x).detach()
    before = pre.clone()
    dead = torch.zeros(H, dtype=torch.bool)
    dead[::3] = True
    values, indices = adapter.topk(pre, K)
    residual = x - adapter.decode(values, indices)
    loss = auxk_loss(adapter, pre, dead, residual.detach(), k_aux=16)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert torch.equal(pre, before)


def test_auxk_loss_uses_only_dead_latents():
    adapter, x = _adapter_and_batch()
    pre = adapter.preactivations(x)
    dead = torch.zeros(H, dtype=torch.bool)
    dead[[5, 17]] = True
    residual = torch.randn(len(x), D)
    loss = auxk_loss(adapter, pre, dead, residual, k_aux=16)
    loss.backward()
    grad_rows = adapter.W.grad.abs().sum(dim=1).nonzero().ravel().tolist()
    assert set(grad_rows) <= {5, 17}


@pytest.mark.parametrize("dead_count, k_aux", [(0, 16), (10, 0)])
def test_auxk_loss_is_zero_without_dead_latents_or_budget(dead_count, k_aux):
    adapter, x = _adapter_and_batch()
    dead = torch.zeros(H, dtype=torch.bool)
    dead[:dead_count] = True
    loss = auxk_loss(adapter, adapter.preactivations(x), dead, x, k_aux)
    assert float(loss) == 0.0


def test_code_cosines_matches_dense_cosine():
    adapter, x = _adapter_and_batch()
    a = adapter.encode(x[:10], K)
    b = adapter.encode(x[10:25], K)
    za, zb = adapter.densify(*a), adapter.densify(*b)
    expected = F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T
    torch.testing.assert_close(code_cosines(a, b, H), expected, rtol=1e-5, atol=1e-6)


def test_contrastive_loss_prefers_matching_pairs():
    adapter, x = _adapter_and_batch(n=32)
    with torch.no_grad():
        a = adapter.encode(x, K)
        perm = torch.roll(torch.arange(32), 1)
        shuffled = (a[0][perm], a[1][perm])
        matched = contrastive_loss(a, a, H, temperature=0.2)
        mismatched = contrastive_loss(a, shuffled, H, temperature=0.2)
        assert float(matched) < float(mismatched)
        identity = torch.eye(32)
        torch.testing.assert_close(contrastive_loss(a, a, H, 0.2, targets=identity), matched)


# --------------------------------------------------------- inference is pure
def test_inference_does_not_change_parameters(make_index, corpus, queries, tmp_path):
    index = make_index(store_vectors=True)
    before = state(index.adapter)
    assert not index.adapter.training
    index.add(corpus)
    codes = index.encode(queries)
    index.decode(codes)
    for kwargs in (dict(score="code"), dict(score="asymmetric"), dict(query_k=3), dict(rerank=20), dict(score="exact")):
        index.search(queries, 5, **kwargs)
    index.reconstruct_codes([0, 1])
    index.stats()
    index.save(tmp_path / "ix")
    assert_same_state(before, state(index.adapter))
    assert all(p.grad is None for p in index.adapter.parameters())


def test_training_does_not_modify_its_input(corpus, tiny_config):
    x = corpus.copy()
    CSRIndex(D, k=K, h=H, metric="ip", config=tiny_config(steps=5)).train(x)
    np.testing.assert_array_equal(x, corpus)


# -------------------------------------------------------------- step schedule
@pytest.mark.parametrize(
    "config, n, expected",
    [
        (CSRConfig(steps=7), 10**6, 7),  # explicit steps win
        (CSRConfig(), 100, 800),  # the default: a fixed short schedule, whatever the data size
        (CSRConfig(), 10**8, 800),
        (CSRConfig.long(), 100, 2000),  # 20 epochs of 1 batch, clamped up to min_steps
        (CSRConfig.long(), 200_000, 3920),  # 20 epochs * ceil(200000 / 1024) = 20 * 196
        (CSRConfig.long(), 10**8, 5000),  # clamped down to max_steps
        (CSRConfig.long(epochs=1, min_steps=1), 2048, 2),
        (CSRConfig.long(epochs=1, min_steps=1), 2049, 3),  # a partial batch counts
        (CSRConfig(steps=None, batch_size=10, epochs=2.5, min_steps=1, max_steps=50), 40, 10),
        (CSRConfig(steps=None, min_steps=5, max_steps=5), 10**7, 5),
    ],
)
def test_train_steps(config, n, expected):
    assert config.train_steps(n) == expected


def test_config_round_trips_through_a_dict():
    config = CSRConfig(k=16, steps=100, lr=1e-3, device="cpu")
    assert CSRConfig.from_dict(config.to_dict()) == config


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")


# ---------------------------------------------------------------- it learns
@pytest.fixture(scope="module")
def trained(corpus, tiny_config):
    x = unit(corpus)
    config = tiny_config(steps=60, k=K)
    return x, config, train_adapter(x, D, H, config)


def test_training_lowers_the_reconstruction_error(trained):
    x, config, result = trained
    untrained = SparseAdapter(D, H, seed=config.seed)
    untrained.pre_bias.data = torch.from_numpy(x.mean(0))  # how training starts (pre_bias_init='mean')
    before = reconstruction_fvu(untrained, x, K)
    after = reconstruction_fvu(result.adapter, x, K)
    assert after < 0.8 * before, (before, after)
    history = [rec["fvu"] for rec in result.history]
    assert history[-1] < history[0]


def test_train_result(trained):
    x, config, result = trained
    assert result.steps == 60
    assert not result.adapter.training
    assert result.adapter.W.device.type == "cpu"
    assert 0 <= result.dead_fraction <= 1 and result.seconds > 0
    assert result.history[-1]["step"] == 59 and result.fvu == result.history[-1]["fvu"]
    assert {"loss", "fvu", "contrastive", "dead_fraction"} <= set(result.history[0])


def test_train_stats_of_an_index(filled_index):
    stats = filled_index.train_stats
    assert stats["n_train"] == 600 and stats["steps"] == 30
    assert np.isfinite(stats["fvu"]) and 0 <= stats["dead_fraction"] <= 1


def test_callback_sees_the_adapter_in_eval_mode(corpus, tiny_config):
    seen = []

    def callback(step, adapter):
        seen.append((step, adapter.training))

    train_adapter(unit(corpus), D, H, tiny_config(steps=6), callback=callback, callback_every=2)
    assert seen == [(2, False), (4, False), (6, False)]


# ---------------------------------------------------------- training variants
def test_training_with_pairs_pulls_queries_towards_their_positives(corpus, tiny_config):
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((D, D)))[0].astype(np.float32)
    q = corpus[:200] @ rotation  # queries that live elsewhere than their positives

    def margin(pairs) -> float:
        """Mean code cosine of matching (query, positive) pairs minus that of other pairs."""
        index = CSRIndex(D, k=K, h=H, config=tiny_config(steps=60))
        index.train(corpus, pairs=pairs)
        assert index.train_stats["n_train"] == len(corpus)  # queries join reconstruction, not the count
        cos = index.query_code_vectors(q).to_dense() @ index.query_code_vectors(corpus[:200]).to_dense().T
        return float(np.diag(cos).mean() - cos[~np.eye(200, dtype=bool)].mean())

    # measured: -0.009 without pairs, +0.025 with; ignoring the pairs would give the same margin twice
    assert margin((q, corpus[:200])) > margin(None) + 0.02


@pytest.mark.parametrize(
    "overrides",
    [
        dict(contrastive="infonce", gamma=0.1),
        dict(nested_k=(2, 4)),
        dict(gamma=0.0),
        dict(beta=0.5, dead_after=10),  # latents die quickly: the AuxK term is active
        dict(pre_bias_init="zero"),
        dict(multi_k_weight=0.0),
        dict(batch_size=10_000),  # larger than the data: one full batch
    ],
    ids=lambda o: ",".join(o),
)
def test_training_variants_run(corpus, tiny_config, overrides):
    result = train_adapter(unit(corpus), D, H, tiny_config(steps=8, k=K, **overrides))
    assert np.isfinite(result.fvu)
    assert all(np.isfinite(v).all() for v in state(result.adapter).values())


def test_unknown_pre_bias_init(corpus, tiny_config):
    with pytest.raises(ValueError, match="pre_bias_init must be 'mean' or 'zero'"):
        train_adapter(unit(corpus), D, H, tiny_config(steps=2, pre_bias_init="median"))


def test_retraining_replaces_the_adapter(make_index, corpus, tiny_config):
    index = make_index()
    old = copy.deepcopy(state(index.adapter))
    index.encoder.config = tiny_config(steps=5, seed=9, k=K, h=H)
    index.train(corpus[:200])
    assert not np.array_equal(old["W"], state(index.adapter)["W"])


# ------------------------------------------------------------------ slow
@pytest.mark.slow
def test_longer_training_gives_useful_search(embeddings, tiny_config):
    """A realistic-size run: CSR search finds many of the exact dense neighbours, re-ranking most."""
    docs = embeddings(2000, d=64, seed=20, clusters=40)
    queries = embeddings(100, d=64, seed=21, clusters=40)
    index = CSRIndex(64, k=16, store_vectors=True, config=tiny_config(steps=400, batch_size=256, warmup_steps=20))
    index.train(docs)
    index.add(docs)
    exact = np.argsort(-(unit(queries) @ unit(docs).T), axis=1)[:, :10]

    def recall(I):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, exact)])

    assert index.train_stats["fvu"] < 0.4
    plain = recall(index.search(queries, 10, score="code", rerank=0)[1])
    reranked = recall(index.search(queries, 10, score="code", rerank=200)[1])
    assert plain > 20 * 10 / 2000, plain  # far above chance (noisy clusters: exact order is hard)
    assert reranked > 0.55 and reranked > 2 * plain, (plain, reranked)
