"""Selective codes: the selection bias and its soft-capped load balancing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csr_index import CSRConfig, CSRIndex, SparseAdapter
from csr_index.train import firing_rates, train_adapter, update_selection_bias

D, H, K = 32, 128, 8


def hubby(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors with a skewed shared component (as text embeddings have): plain TopK training
    grows a hub latent on it (~40 % of vectors at k = 8, h = 128)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, D))
    u = rng.standard_normal(D)
    u /= np.linalg.norm(u)
    x = (centers[rng.integers(0, 12, n)] + 0.5 * rng.standard_normal((n, D))
         + 3.0 * np.abs(rng.standard_normal((n, 1))) * u)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def busiest_share(adapter: SparseAdapter, x: np.ndarray, k: int = K) -> float:
    with torch.no_grad():
        values, indices = adapter.encode(torch.from_numpy(x), k)
    return float(firing_rates(values, indices, adapter.h).max())


def test_selection_bias_moves_the_support_not_the_values():
    adapter = SparseAdapter(D, H, seed=3).eval()
    x = torch.from_numpy(hubby(50))
    with torch.no_grad():
        pre = adapter.preactivations(x)
        plain_values, plain_indices = adapter.encode(x, K)
        assert (plain_values[:, :-1] >= plain_values[:, 1:]).all(), "zero bias: plain TopK, descending"
        bias = torch.zeros(H)
        bias[plain_indices[:, 0]] = -10.0  # ban every vector's favourite latent
        adapter.selection_bias.copy_(bias)
        values, indices = adapter.encode(x, K)
    assert not (indices == plain_indices[:, :1]).any(), "a banned latent is never picked"
    expected = torch.topk(pre + bias, K, dim=1).indices
    assert torch.equal(indices, expected), "the support is topk(pre + selection_bias), in that order"
    assert torch.allclose(values, torch.relu(pre.gather(1, indices))), "values are relu(pre), unbiased"
    with torch.no_grad():
        short_values, short_indices = adapter.encode(x, K // 2)
    assert torch.equal(short_indices, indices[:, : K // 2]), "the k'-code is the first k' entries"


def test_update_selection_bias_pushes_only_hubs_and_relaxes_to_zero():
    adapter = SparseAdapter(D, H)
    config = CSRConfig(balance_cap=4.0, balance_step=0.01)
    cap = 4.0 * K / H
    adapter.selection_bias[:3] = torch.tensor([-0.5, -0.005, 0.0])
    rates = torch.full((H,), cap / 2)
    rates[0] = rates[2] = 2 * cap  # latents 0 and 2 are hubs, 1 is not
    update_selection_bias(adapter, rates, K, config)
    b = adapter.selection_bias
    assert b[0] == pytest.approx(-0.51) and b[2] == pytest.approx(-0.01), "hubs are pushed down"
    assert b[1] == 0.0, "a non-hub relaxes towards 0 and stops there"
    assert (b[3:] == 0).all(), "ordinary latents keep no bias (never positive)"


def test_firing_rates_count_only_active_slots():
    values = torch.tensor([[0.5, 0.2], [0.4, 0.0], [0.3, 0.1]])
    indices = torch.tensor([[0, 1], [0, 2], [3, 1]])
    assert firing_rates(values, indices, 4).tolist() == pytest.approx([2 / 3, 2 / 3, 0.0, 1 / 3])


def test_balanced_training_caps_the_hub_latents():
    """Real training on vectors with a strong shared direction: plain TopK grows hub latents; the
    soft cap keeps every latent near or below cap * k / h, and reconstruction stays close."""
    x = hubby(1500)
    base = dict(steps=300, batch_size=256, warmup_steps=10, seed=0, device="cpu", k=K)
    plain = train_adapter(x, D, H, CSRConfig(**base, balance_cap=None))
    capped = train_adapter(x, D, H, CSRConfig(**base, balance_cap=2.0, balance_step=2e-3))
    cap = 2.0 * K / H
    plain_busiest, capped_busiest = busiest_share(plain.adapter, x), busiest_share(capped.adapter, x)
    assert plain_busiest > 3 * cap, plain_busiest  # the problem exists on this data
    assert (plain.adapter.selection_bias == 0).all(), "without balance_cap the support is plain TopK"
    assert capped_busiest < 1.5 * cap, (capped_busiest, cap)
    assert capped_busiest < plain_busiest / 2
    assert (capped.adapter.selection_bias <= 0).all() and (capped.adapter.selection_bias < 0).any()
    assert capped.fvu < plain.fvu + 0.1, (plain.fvu, capped.fvu)


def test_selection_bias_is_saved_and_loaded(tmp_path):
    x = hubby(600)
    index = CSRIndex(D, k=K, h=H, config=CSRConfig(steps=60, batch_size=128, warmup_steps=5, device="cpu",
                                                   balance_cap=2.0, balance_step=5e-3))
    index.train(x)
    index.add(x)
    assert (index.adapter.selection_bias < 0).any()
    index.save(tmp_path / "a.csr")
    loaded = CSRIndex.load(tmp_path / "a.csr")
    assert torch.equal(loaded.adapter.selection_bias, index.adapter.selection_bias)
    assert np.array_equal(loaded.encode(x[:50]).indices, index.encode(x[:50]).indices)
    assert np.array_equal(loaded.search(x[:5], 5)[1], index.search(x[:5], 5)[1])


def test_adapters_without_a_selection_bias_still_load():
    """States written before load balancing existed (or by other tools) have no selection bias: zero."""
    from csr_index import CSREncoder

    x = hubby(300)
    index = CSRIndex(D, k=K, h=H, config=CSRConfig(steps=5, batch_size=128, warmup_steps=2, device="cpu",
                                                   balance_cap=None))
    index.train(x)
    state = index.encoder.state()
    state.pop("selection_bias")
    encoder = CSREncoder.from_state(index.encoder.meta(), state)
    assert (encoder.adapter.selection_bias == 0).all()
    np.testing.assert_array_equal(encoder.encode(x).indices, index.encode(x).indices)


@pytest.mark.parametrize("overrides", [dict(balance_cap=0.0), dict(balance_cap=-1.0), dict(balance_step=-1e-3),
]) 
def test_bad_balancing_settings_are_refused(overrides):
    assert CSRConfig().balance_cap == 4.0, "balancing is on by default"
    with pytest.raises(ValueError):
        CSRConfig(**overrides)


def test_settle_makes_the_cap_hold_on_the_data():
    """After training the cap holds on average over batches; settling makes it hold on the vectors
    themselves, by lowering only the latents above it."""
    from csr_index.balance import settle_selection_bias

    x = hubby(2000)
    adapter = SparseAdapter(D, H, seed=1).eval()
    adapter.pre_bias.data = torch.from_numpy(x.mean(0))
    cap = 2.0 * K / H
    assert busiest_share(adapter, x) > 1.5 * cap  # plain TopK on this data has hubs
    before = adapter.selection_bias.clone()
    lowered = settle_selection_bias(adapter, torch.from_numpy(x), K, cap, rounds=8)
    assert lowered > 0
    assert busiest_share(adapter, x) <= cap + 1 / len(x)
    changed = adapter.selection_bias != before
    assert (adapter.selection_bias[changed] < before[changed]).all(), "biases only go down"
    assert changed.sum() == lowered
    again = adapter.selection_bias.clone()
    assert settle_selection_bias(adapter, torch.from_numpy(x), K, cap) == 0  # nothing above the cap: no change
    assert torch.equal(adapter.selection_bias, again)


def test_default_training_holds_the_cap_on_its_training_vectors():
    x = hubby(1500)
    result = train_adapter(x, D, H, CSRConfig(steps=40, seed=0, device="cpu", k=K))
    assert busiest_share(result.adapter, x) <= 4.0 * K / H + 0.01
