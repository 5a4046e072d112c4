"""Paired comparison of two models on the same test users (METHOD.md, "Claiming a win").

With 943 test users one standard error of NDCG@10 is about 0.008, larger than a 5% margin,
so the spread of a few seeds' means says little. What does: the per-user difference
NDCG_A(u) - NDCG_B(u) on the SAME users, averaged over the seeds of each model (seeds pair
by index: seed s of A with seed s of B, both trained on the same split), and a bootstrap
over users of its mean. The interval excluding zero is the claim; its width is the noise.
"""

from __future__ import annotations

import numpy as np

from training.evaluate import MISS


def per_user_ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """(..., U) 0-based target ranks (MISS = not ranked) -> (..., U) NDCG@k per user."""
    ranks = np.asarray(ranks)
    hit = (ranks < k) & (ranks != MISS)
    gain = np.zeros(ranks.shape, dtype=np.float64)
    gain[hit] = 1.0 / np.log2(ranks[hit].astype(np.float64) + 2.0)
    return gain


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """a, b: (S, U) per-user metric of two models over S seeds each (same users, same
    order). Returns the mean difference a - b, its bootstrap interval at `level`, the
    ratio of means and the share of resamples where a does not beat b."""
    a, b = (
        np.atleast_2d(np.asarray(a, dtype=np.float64)),
        np.atleast_2d(np.asarray(b, dtype=np.float64)),
    )
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two models were measured on different users: {a.shape}, {b.shape}")
    diff = a.mean(axis=0) - b.mean(axis=0)  # (U,) seed-averaged per-user difference
    n_users = diff.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # chunks bound the (R, U) index array
        stop = min(start + 1000, n_resamples)
        idx = rng.integers(0, n_users, size=(stop - start, n_users))
        means[start:stop] = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    mean_b = float(b.mean())
    return {
        "diff": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "level": level,
        "ratio": float(a.mean() / mean_b) if mean_b > 0 else None,
        "p_not_better": float((means <= 0).mean()),
        "users": int(n_users),
        "seeds": [int(a.shape[0]), int(b.shape[0])],
    }
