"""How the router splits the budget: alpha against popularity, as numbers and a plot.

The method's claim is that popular items lean on collaborative tokens and rare ones on
semantic tokens; the Spearman correlation between alpha and log(1 + training count) is
the one-number check (target > 0.5), the scatter plot and histogram show the shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


def alpha_summary(alpha: np.ndarray, train_counts: np.ndarray, n_cf: np.ndarray) -> dict:
    """alpha, train_counts, n_cf: (N + 1,) with row 0 padding (ignored). Warm items only
    enter the correlation (cold items all share one feature vector, hence one alpha)."""
    alpha, counts, n_cf = (np.asarray(x)[1:] for x in (alpha, train_counts, n_cf))
    warm = counts > 0
    # Undefined (None) for fewer than 3 warm items or a constant side (a fixed alpha).
    defined = warm.sum() > 2 and np.ptp(alpha[warm]) > 0 and np.ptp(counts[warm]) > 0
    rho = spearmanr(alpha[warm], np.log1p(counts[warm])).statistic if defined else None
    split = np.bincount(n_cf.astype(np.int64), minlength=int(n_cf.max(initial=0)) + 1)
    return {
        "spearman_alpha_vs_log_count": None if rho is None or np.isnan(rho) else float(rho),
        "alpha_mean": float(alpha.mean()),
        "alpha_std": float(alpha.std()),
        "alpha_quantiles": {
            q: float(np.quantile(alpha, float(q))) for q in ("0.05", "0.25", "0.5", "0.75", "0.95")
        },
        "items_by_n_cf": {str(k): int(v) for k, v in enumerate(split)},
    }


def plot_alpha(alpha: np.ndarray, train_counts: np.ndarray, path: Path, title: str = "") -> Path:
    """Scatter of alpha against log(1 + count) and the alpha histogram, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    alpha, counts = np.asarray(alpha)[1:], np.asarray(train_counts)[1:]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.scatter(np.log1p(counts), alpha, s=4, alpha=0.5)
    left.set_xlabel("log(1 + training interactions)")
    left.set_ylabel("alpha (CF share of the budget)")
    left.set_ylim(-0.02, 1.02)
    right.hist(alpha, bins=40, range=(0, 1))
    right.set_xlabel("alpha")
    right.set_ylabel("items")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
