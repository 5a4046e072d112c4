import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.router import Router, RouterConfig, popularity_bands


def _counts(n: int = 40, seed: int = 0) -> np.ndarray:
    """(N + 1,) training counts of a small synthetic catalog (row 0 padding, 3 cold items)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 200, size=n + 1)
    counts[0] = 0
    counts[1:4] = 0
    return counts


def _learned(**kw) -> Router:
    return Router(RouterConfig(**kw)).init_slope(_counts())


def _set_slope(router: Router, slope: float) -> Router:
    with torch.no_grad():
        router.raw_slope.copy_(torch.tensor(math.log(math.expm1(slope))))
    return router


# ---- the monotone curve -----------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    raw_slope=st.floats(-2.0, 2.0),
    cold_alpha=st.floats(0.01, 0.45),
    low=st.integers(0, 10_000),
    gap=st.integers(1, 10_000),
)
def test_learned_alpha_increases_with_count(raw_slope, cold_alpha, low, gap):
    router = Router(RouterConfig(cold_alpha=cold_alpha))
    with torch.no_grad():
        router.raw_slope.fill_(raw_slope)
    alpha = router(torch.tensor([low, low + gap]))
    assert torch.all((alpha > 0) & (alpha <= 1))
    assert alpha[0] <= alpha[1]
    if alpha[1] < 0.95:  # away from float32 saturation the curve is strictly increasing
        assert alpha[0] < alpha[1]


def test_learned_alpha_is_strictly_increasing_over_a_catalog():
    router = _learned()
    counts = torch.arange(0, 2_000)
    alpha = router(counts)
    assert alpha.dtype == torch.float32 and alpha.shape == (2_000,)
    assert torch.all(alpha[1:] > alpha[:-1])
    # ints and floats give the same curve
    torch.testing.assert_close(router(counts.double()), alpha)


@pytest.mark.parametrize("cold_alpha", [0.1, 0.02, 0.25, 0.45])
def test_an_item_without_interactions_gets_cold_alpha(cold_alpha):
    router = Router(RouterConfig(cold_alpha=cold_alpha))
    for slope in (0.01, 1.0, 7.0):
        alpha = _set_slope(router, slope)(torch.zeros(3))
        torch.testing.assert_close(alpha, torch.full((3,), cold_alpha), rtol=0, atol=1e-7)


def test_default_cold_alpha_is_semantic():
    cfg = RouterConfig()
    assert cfg.cold_alpha < 0.3
    router = _learned()
    alpha = router(torch.zeros(1)).detach()
    assert float(alpha) == pytest.approx(cfg.cold_alpha, abs=1e-7)
    # ... below the middle of the first CF level for the default budget: no CF token
    assert router.hard_split(alpha).item() == 0
    for budget in (1, 2, 3, 4):
        r = Router(RouterConfig(budget=budget))
        assert r.hard_split(r(torch.zeros(1))).item() == 0


def test_init_slope_puts_the_median_warm_item_at_one_half():
    counts = np.array([0, 0, 0, 1, 3, 7, 20, 100])  # padding, 2 cold, 5 warm (median 7)
    router = Router(RouterConfig()).init_slope(counts)
    alpha = router(torch.as_tensor(counts)).detach()
    assert float(alpha[5]) == pytest.approx(0.5, abs=1e-6)
    assert torch.all(alpha[3:5] < 0.5) and torch.all(alpha[6:] > 0.5)
    assert float(alpha[1]) == pytest.approx(RouterConfig().cold_alpha, abs=1e-7)
    # Cold items and the padding row do not move the median.
    more_cold = np.array([0, 0, 0, 0, 0, 0, 0, 1, 3, 7, 20, 100])
    other = Router(RouterConfig()).init_slope(more_cold)
    torch.testing.assert_close(other.slope, router.slope)
    # A slope already fitted is overwritten, not accumulated.
    _set_slope(other, 9.0).init_slope(counts)
    torch.testing.assert_close(other.slope, router.slope)


def test_init_slope_rejects_catalogs_without_warm_items():
    with pytest.raises(ValueError, match="at least one item"):
        Router(RouterConfig()).init_slope(np.array([5, 0, 0]))  # row 0 is not an item
    with pytest.raises(ValueError, match=">= 0"):
        Router(RouterConfig()).init_slope(np.array([0, 3, -1]))
    with pytest.raises(ValueError, match="finite"):
        Router(RouterConfig()).init_slope(np.array([0.0, 3.0, np.nan]))


def test_slope_gets_gradient_through_the_code_weights():
    router = _learned()
    counts = torch.as_tensor(_counts(seed=1)[1:17])
    alpha = router(counts)
    cf, sem = router.code_weights(alpha)
    gen = torch.Generator().manual_seed(0)
    emb_cf, emb_sem = torch.randn(16, 3, 8, generator=gen), torch.randn(16, 3, 8, generator=gen)
    item = (cf.unsqueeze(-1) * emb_cf).sum(1) + (sem.unsqueeze(-1) * emb_sem).sum(1)
    (item * torch.randn(8, generator=gen)).sum().backward()
    assert router.raw_slope.grad is not None and router.raw_slope.grad.abs() > 0
    # d alpha / d slope is 0 at count 0 (cold items stay at cold_alpha) and > 0 above.
    router.zero_grad()
    alpha = router(torch.tensor([0.0, 1.0, 50.0]))
    (grad,) = torch.autograd.grad(alpha[0], router.raw_slope, retain_graph=True)
    assert float(grad) == 0.0
    (grad,) = torch.autograd.grad(alpha[1:].sum(), router.raw_slope)
    assert float(grad) > 0.0


@pytest.mark.parametrize(
    ("fixed", "budget", "n_cf"),
    [(0.5, 5, 3), (0.5, 3, 2), (0.5, 4, 2), (0.5, 6, 3), (0.0, 5, 0), (1.0, 5, 5), (1.0, 3, 3)],
)
def test_fixed_alpha_variants(fixed, budget, n_cf):
    router = Router(RouterConfig(fixed_alpha=fixed, budget=budget))
    assert not router.learned
    assert not any(p.requires_grad for p in router.parameters())
    counts = torch.tensor([0, 0, 1, 5, 100, 10_000, 3])  # cold items too: every item the same
    alpha = router(counts)
    assert torch.equal(alpha, torch.full((7,), fixed))
    assert not alpha.requires_grad
    split = router.hard_split(alpha)
    assert split.dtype == torch.int64 and split.tolist() == [n_cf] * 7  # 0.5 * 5 -> 3: half up
    # init_slope does not change a fixed router's output
    assert torch.equal(router.init_slope(_counts())(counts), alpha)


# ---- code weights and the hard split -------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.0, 1.0, allow_nan=False), budget=st.integers(1, 8))
def test_code_weights_are_the_two_expert_gate(alpha, budget):
    router = Router(RouterConfig(budget=budget, fixed_alpha=0.5))
    cf, sem = router.code_weights(torch.tensor([alpha], dtype=torch.float64))
    assert cf.shape == sem.shape == (1, budget)
    torch.testing.assert_close(cf, torch.full((1, budget), 2 * alpha, dtype=torch.float64))
    torch.testing.assert_close(sem, torch.full((1, budget), 2 * (1 - alpha), dtype=torch.float64))
    # Every level of both codebooks stays in (weights sum to 2 per level), and the even
    # split is weight 1 on each.
    torch.testing.assert_close(cf + sem, torch.full((1, budget), 2.0, dtype=torch.float64))


def test_code_weights_follow_popularity_for_a_learned_router():
    router = _learned(budget=4)
    counts = torch.as_tensor(_counts())
    alpha = router(counts)
    cf, sem = router.code_weights(alpha)
    assert cf.shape == sem.shape == (41, 4)
    order = torch.argsort(counts, stable=True)
    assert torch.all(cf[order][1:, 0] >= cf[order][:-1, 0])  # more popular, more CF weight
    assert torch.all(sem[order][1:, 0] <= sem[order][:-1, 0])


def test_hard_split_clamps_and_rounds_half_up():
    router = _learned()
    alpha = torch.tensor([-0.2, 0.0, 0.16, 0.17, 0.5, 0.83, 0.84, 1.0, 1.3])
    assert router.hard_split(alpha).tolist() == [0, 0, 0, 1, 2, 2, 3, 3, 3]


def test_forward_and_weights_check_shapes():
    router = _learned()
    with pytest.raises(ValueError, match="counts"):
        router(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="alpha"):
        router.code_weights(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="alpha"):
        router.hard_split(torch.zeros(2, 1))


def test_slope_travels_with_the_state_dict():
    router = _learned()
    clone = Router(RouterConfig())
    counts = torch.as_tensor(_counts(seed=3))
    assert not torch.equal(clone(counts), router(counts))
    clone.load_state_dict(router.state_dict())
    assert torch.equal(clone(counts), router(counts))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget": 0},
        {"cold_alpha": 0.0},
        {"cold_alpha": 0.5},
        {"fixed_alpha": 1.5},
        {"lb_target": -0.1},
        {"lb_weight": -1.0},
        {"n_bands": 0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        RouterConfig(**kwargs)


def test_config_round_trip():
    cfg = RouterConfig(budget=4, fixed_alpha=0.5, cold_alpha=0.05)
    assert RouterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        RouterConfig.from_dict({"nope": 1})


# ---- bands and load balancing ---------------------------------------------------------


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
    with pytest.raises(ValueError):
        popularity_bands(np.array([0]), 2)


def test_load_balancing_weighs_bands_equally():
    router = _learned(lb_target=0.5, lb_weight=0.1)
    band = torch.tensor([1] * 1000 + [0] * 9)  # a huge head band, a tiny tail band
    assert float(router.load_balance(torch.full((1009,), 0.5), band)) == 0.0
    # Head 0.9, tail 0.1: the band average is on target although 99% of items use CF more.
    split = torch.tensor([0.9] * 1000 + [0.1] * 9)
    assert float(router.load_balance(split, band)) == pytest.approx(0.0, abs=1e-9)
    item_mean = float(split.mean())
    assert (item_mean - 0.5) ** 2 > 0.1  # an item-weighted loss would be dominated by the head
    off = router.load_balance(torch.full((1009,), 0.7), band)
    assert float(off) == pytest.approx(0.1 * 0.04, rel=1e-4)  # lb_weight * (0.7 - 0.5)^2
    tail_off = torch.tensor([0.5] * 1000 + [0.1] * 9)
    assert float(router.load_balance(tail_off, band)) == pytest.approx(0.1 * 0.04, rel=1e-4)
    # Bands absent from the batch do not count: two present bands of five.
    sparse_band = torch.tensor([4] * 1000 + [2] * 9)
    assert float(router.load_balance(tail_off, sparse_band)) == pytest.approx(0.004, rel=1e-4)


def test_load_balance_trains_the_slope_towards_the_target():
    counts = _counts(n=200)
    router = Router(RouterConfig(lb_target=0.7, lb_weight=1.0)).init_slope(counts)
    band = torch.as_tensor(popularity_bands(counts, 5)[1:])
    c = torch.as_tensor(counts[1:])
    before = router.load_balance(router(c), band)
    before.backward()
    before = float(before.detach())
    assert before > 0
    assert float(router.raw_slope.grad) < 0  # more slope = more CF = closer to 0.7
    opt = torch.optim.SGD(router.parameters(), lr=5.0)
    for _ in range(50):
        opt.zero_grad()
        loss = router.load_balance(router(c), band)
        loss.backward()
        opt.step()
    assert float(router.load_balance(router(c), band).detach()) < 0.1 * before


def test_load_balance_is_zero_for_a_fixed_router_and_checks_shapes():
    fixed = Router(RouterConfig(fixed_alpha=0.9, lb_weight=1.0))
    alpha = fixed(torch.arange(10))
    assert float(fixed.load_balance(alpha, torch.arange(10) % 2)) == 0.0
    router = _learned()
    assert float(router.load_balance(torch.zeros(0), torch.zeros(0, dtype=torch.long))) == 0.0
    with pytest.raises(ValueError):
        router.load_balance(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        router.load_balance(torch.zeros(3, 1), torch.zeros(3, 1, dtype=torch.long))
