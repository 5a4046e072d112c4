import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.router import (
    FeatureScaler,
    Router,
    RouterConfig,
    popularity_bands,
    router_features,
)

DAY = 86_400.0


def _catalog(n: int = 40, seed: int = 0) -> np.ndarray:
    """Raw features of a small synthetic catalog (row 0 padding, a few cold items)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 200, size=n + 1)
    counts[0] = 0
    counts[1:4] = 0
    first = 1_000.0 * DAY - rng.uniform(0, 500, size=n + 1) * DAY
    return router_features(counts, first, 1_000.0 * DAY, n_users=300)


def _learned(**kw) -> Router:
    router = Router(RouterConfig(**kw))
    router.fit_scaler(_catalog())
    return router


# ---- masks and the hard split ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    alpha=st.floats(0.0, 1.0, allow_nan=False),
    budget=st.integers(1, 8),
)
def test_soft_masks_tend_to_hard_layout(alpha, budget):
    x = alpha * budget
    if abs(x - math.floor(x) - 0.5) < 1e-2:  # too close to a tie for tau = 1e-4 in float32
        return
    router = Router(RouterConfig(budget=budget, mask_tau=1e-4, fixed_alpha=0.5))
    a = torch.tensor([alpha], dtype=torch.float64)
    cf, sem = router.soft_masks(a)
    n_cf = round(x)
    k = torch.arange(1, budget + 1)
    assert torch.allclose(cf[0], (k <= n_cf).double(), atol=1e-6)
    assert torch.allclose(sem[0], (k <= budget - n_cf).double(), atol=1e-6)
    assert int(router.hard_split(a)[0]) == n_cf
    hard_cf, hard_sem = router.hard_masks(a)
    assert torch.equal(hard_cf, (cf > 0.5).double()) and torch.equal(hard_sem, (sem > 0.5).double())
    assert float(hard_cf.sum() + hard_sem.sum()) == budget


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.0, 1.0), tau=st.sampled_from([1e-3, 0.1, 1.0, 5.0]))
def test_soft_masks_keep_the_budget_at_any_tau(alpha, tau):
    router = Router(RouterConfig(mask_tau=tau, fixed_alpha=0.5))
    cf, sem = router.soft_masks(torch.tensor([alpha], dtype=torch.float64))
    assert cf.shape == sem.shape == (1, 5)
    assert float(cf.sum() + sem.sum()) == pytest.approx(5.0, abs=1e-9)
    assert torch.all(cf[:, :-1] >= cf[:, 1:])  # a prefix of levels
    assert torch.all(sem[:, :-1] >= sem[:, 1:])


def test_mask_gradient_reaches_router_params():
    torch.manual_seed(0)
    router = _learned()
    feats = torch.as_tensor(_catalog(seed=1)[1:17])
    alpha = router(feats)
    cf, sem = router.soft_masks(alpha)
    emb_cf, emb_sem = torch.randn(16, 5, 8), torch.randn(16, 5, 8)
    item = (cf.unsqueeze(-1) * emb_cf).sum(1) + (sem.unsqueeze(-1) * emb_sem).sum(1)  # (B, 8)
    loss = (item * torch.randn(8)).sum()
    loss.backward()
    last = router.mlp[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    # The last layer starts at zero; after one step the gradient reaches the first layer too.
    with torch.no_grad():
        for p in router.parameters():
            p -= 0.5 * p.grad
    router.zero_grad()
    alpha = router(feats)
    cf, sem = router.soft_masks(alpha)
    item = (cf.unsqueeze(-1) * emb_cf).sum(1) + (sem.unsqueeze(-1) * emb_sem).sum(1)
    (item * torch.randn(8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in router.parameters())


@pytest.mark.parametrize(
    ("fixed", "budget", "n_cf"),
    [(0.5, 5, 3), (0.5, 3, 2), (0.5, 4, 2), (0.5, 6, 3), (0.0, 5, 0), (1.0, 5, 5), (1.0, 3, 3)],
)
def test_fixed_alpha_variants(fixed, budget, n_cf):
    router = Router(RouterConfig(fixed_alpha=fixed, budget=budget))
    assert list(router.parameters()) == []
    alpha = router(torch.randn(7, 4))  # no scaler fit needed
    assert torch.equal(alpha, torch.full((7,), fixed))
    assert not alpha.requires_grad
    split = router.hard_split(alpha)
    assert split.dtype == torch.int64 and split.tolist() == [n_cf] * 7  # 0.5 * 5 -> 3: half up
    regs = router.regularisers(alpha, torch.randn(7, 4), torch.zeros(7, dtype=torch.long))
    assert all(float(v) == 0.0 for v in regs.values())


def test_hard_split_clamps_and_learned_alpha_in_unit_interval():
    router = _learned()
    alpha = torch.tensor([-0.2, 0.0, 0.09, 0.11, 0.69, 0.71, 1.0, 1.3])
    assert router.hard_split(alpha).tolist() == [0, 0, 0, 1, 3, 4, 5, 5]
    alpha = router(torch.as_tensor(_catalog()))
    assert alpha.shape == (41,) and torch.all((alpha > 0) & (alpha < 1))
    assert torch.allclose(alpha, torch.full_like(alpha, 0.5))  # zero-initialised last layer


def test_forward_needs_a_fitted_scaler_and_checks_shapes():
    router = Router(RouterConfig())
    with pytest.raises(ValueError, match="fit_scaler"):
        router(torch.zeros(2, 4))
    router.fit_scaler(_catalog())
    with pytest.raises(ValueError):
        router(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        router.soft_masks(torch.zeros(2, 1))


def test_scaler_buffers_travel_with_the_state_dict():
    router = _learned()
    clone = Router(RouterConfig())
    clone.load_state_dict(router.state_dict())
    feats = torch.as_tensor(_catalog(seed=3))
    assert torch.equal(clone(feats), router(feats))
    assert bool(clone.scaler.fitted)


def test_scaler_fits_on_warm_items_only():
    feats = _catalog()
    scaler = FeatureScaler(4).fit(feats)
    warm = feats[:, 2] < 1.0
    assert warm.sum() == 37  # rows 0..3 are cold
    np.testing.assert_allclose(scaler.mean.numpy(), feats[warm].mean(0), rtol=1e-5)
    z = scaler(torch.as_tensor(feats))
    assert torch.isfinite(z).all()
    with pytest.raises(ValueError):
        FeatureScaler(4).fit(feats[:2])  # rows 0 and 1 are cold: nothing to fit on


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget": 0},
        {"temperature": 0.0},
        {"mask_tau": -1.0},
        {"fixed_alpha": 1.5},
        {"lb_target": -0.1},
        {"smooth_weight": -1.0},
        {"n_bands": 0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        RouterConfig(**kwargs)


def test_config_round_trip():
    cfg = RouterConfig(budget=4, fixed_alpha=0.5)
    assert RouterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        RouterConfig.from_dict({"nope": 1})


# ---- features and bands ----------------------------------------------------------------


def test_router_features_hand_example():
    counts = np.array([0, 9, 1, 0])  # padding, warm, warm, cold
    last = 100.0 * DAY
    first = np.array([np.nan, 90.0 * DAY, 100.0 * DAY, np.nan])
    unc = np.array([np.nan, 0.2, 0.4, np.nan])
    x = router_features(counts, first, last, n_users=10, uncertainty=unc)
    assert x.dtype == np.float32 and x.shape == (4, 4)
    expected = np.array(
        [
            [math.log(1 / 10), 0.0, 1.0, 0.3],
            [math.log(10 / 10), 10.0, 1 / (1 + 9 / 11), 0.2],
            [math.log(2 / 10), 0.0, 1 / (1 + 1 / 1), 0.4],
            [math.log(1 / 10), 0.0, 1.0, 0.3],
        ]
    )
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)


def test_router_features_without_timestamps_or_uncertainty():
    x = router_features(np.array([0, 3, 0]), None, None, n_users=5)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x[:, 1], 0.0)
    np.testing.assert_allclose(x[:, 2], [1.0, 0.25, 1.0])
    np.testing.assert_allclose(x[:, 3], 0.0)


def test_router_features_rejects_bad_input():
    with pytest.raises(ValueError):
        router_features(np.array([0, -1]), None, None, n_users=5)
    with pytest.raises(ValueError):
        router_features(np.array([0, 1]), np.array([0.0, np.nan]), 10.0, n_users=5)
    with pytest.raises(ValueError):
        router_features(np.array([0, 1]), np.array([0.0, 20.0]), 10.0, n_users=5)
    with pytest.raises(ValueError):
        router_features(np.array([0, 1]), None, None, n_users=0)


def test_popularity_bands():
    counts = np.array([0, 0, 0, 1, 2, 3, 5, 8, 13, 100, 1000])
    bands = popularity_bands(counts, 5)
    assert bands.dtype == np.int64 and bands.shape == (11,)
    assert bands[0] == 0 and bands[1] == bands[2] == 0  # padding and cold in the coldest band
    assert np.all(np.diff(bands[1:]) >= 0)  # monotone in count
    assert bands[-1] == 4 and set(bands[1:]) == set(range(5))
    same = popularity_bands(np.array([0, 7, 7, 7, 7]), 3)
    assert len(set(same[1:])) == 1  # equal counts share a band
    with pytest.raises(ValueError):
        popularity_bands(counts, 0)


# ---- regularisers -------------------------------------------------------------------


def test_load_balancing_weighs_bands_equally():
    router = _learned(lb_target=0.5)
    feats = torch.as_tensor(_catalog(n=1009))[1:]  # (1009, 4)
    band = torch.tensor([1] * 1000 + [0] * 9)  # a huge head band, a tiny tail band
    at_target = router.regularisers(torch.full((1009,), 0.5), feats, band)
    assert float(at_target["lb"]) == 0.0
    # Head 0.9, tail 0.1: the band average is on target although 99% of items use CF more.
    split = torch.tensor([0.9] * 1000 + [0.1] * 9)
    assert float(router.regularisers(split, feats, band)["lb"]) == pytest.approx(0.0, abs=1e-9)
    item_mean = float(split.mean())
    assert (item_mean - 0.5) ** 2 > 0.1  # an item-weighted loss would be dominated by the head
    off = router.regularisers(torch.full((1009,), 0.7), feats, band)
    assert float(off["lb"]) == pytest.approx(0.04, rel=1e-4)
    tail_off = torch.tensor([0.5] * 1000 + [0.1] * 9)
    assert float(router.regularisers(tail_off, feats, band)["lb"]) == pytest.approx(0.04, rel=1e-4)


def test_smoothness_zero_for_constant_alpha_positive_for_varying():
    router = _learned(smooth_k=3)
    base = torch.as_tensor(_catalog()[10])
    feats = base + 1e-4 * torch.randn(8, 4)  # near-identical items
    band = torch.zeros(8, dtype=torch.long)
    const = router.regularisers(torch.full((8,), 0.3), feats, band)
    assert float(const["smooth"]) == 0.0
    varying = torch.linspace(0.1, 0.9, 8, requires_grad=True)
    regs = router.regularisers(varying, feats, band)
    assert float(regs["smooth"].detach()) > 0.0
    expected = 0.1 * regs["lb"] + 0.01 * regs["smooth"]
    assert torch.allclose(regs["total"], expected)
    regs["total"].backward()
    assert varying.grad is not None and varying.grad.abs().sum() > 0


def test_smoothness_uses_nearest_neighbours_only():
    router = _learned(smooth_k=1)
    z = router.scaler.mean + router.scaler.std * torch.tensor(
        [[0.0, 0, 0, 0], [0.01, 0, 0, 0], [5.0, 0, 0, 0], [5.01, 0, 0, 0]]
    )
    # Two tight pairs with equal alpha inside each pair but very different alpha between.
    alpha = torch.tensor([0.1, 0.1, 0.9, 0.9])
    regs = router.regularisers(alpha, z, torch.tensor([0, 0, 1, 1]))
    assert float(regs["smooth"]) == pytest.approx(0.0, abs=1e-12)


def test_regularisers_check_shapes():
    router = _learned()
    with pytest.raises(ValueError):
        router.regularisers(torch.zeros(3), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        router.regularisers(torch.zeros(3), torch.zeros(3, 4), torch.zeros(3))
