"""The dense weight w shipped with a model: the one-standard-error rule."""

import numpy as np

from training.evaluate import MISS, summarise
from training.stages.generator.evaluate import DENSE_ONLY, ServedEvaluation
from training.stats import per_user_ndcg


def _evaluation(ranks_by_weight: dict[float, np.ndarray]) -> ServedEvaluation:
    results = {
        w: summarise(ranks, np.zeros(len(ranks), dtype=np.int64))
        for w, ranks in ranks_by_weight.items()
    }
    return ServedEvaluation(results=results, diagnostics={w: {} for w in ranks_by_weight})


def test_a_mix_that_wins_clearly_is_shipped():
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 40, size=2000)
    mixed = np.maximum(dense - 5, 0)  # every user's target ranked higher by the mix
    found = _evaluation({0.5: mixed, DENSE_ONLY: dense})
    assert found.best_weight() == 0.5
    assert found.chosen_weight() == 0.5


def test_a_gain_inside_the_noise_ships_the_dense_head():
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 40, size=2000)
    dense[:56] = 5
    mixed = dense.copy()
    mixed[:20] = 0  # 20 users gain 0.64 each, 36 lose 0.36: a best by a hair, in the noise
    mixed[20:56] = MISS
    found = _evaluation({0.5: mixed, DENSE_ONLY: dense})
    gain = per_user_ndcg(mixed) - per_user_ndcg(dense)
    assert 0 < gain.mean() < gain.std(ddof=1) / np.sqrt(len(gain))
    assert found.best_weight() == 0.5
    assert found.chosen_weight() == DENSE_ONLY


def test_without_a_dense_only_point_the_best_is_shipped():
    ranks = np.array([0, 3, MISS, 12])
    found = _evaluation({0.0: ranks, 0.5: np.array([0, 2, MISS, 12])})
    assert found.chosen_weight() == 0.5


def test_the_schedule_follows_the_dense_head_whatever_w_wins():
    dense = np.array([5, 5, 5, 5])
    found = _evaluation({0.5: np.array([0, 0, 0, 0]), DENSE_ONLY: dense})
    assert found.best_weight() == 0.5
    assert found.schedule_weight() == DENSE_ONLY
    assert _evaluation({0.0: dense, 0.5: dense - 5}).schedule_weight() == 0.5
