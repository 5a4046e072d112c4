"""Popularity-aware token allocation (the paper's PATA): how many of an item's L tokens
come from the collaborative codebook (C_CF) and how many from the semantic one (C_SEM).

alpha_i, the CF share of item i, is a monotone function of its training interaction
count c_i:

    alpha_i = sigmoid(logit(cold_alpha) + slope * log(1 + c_i)),    slope = softplus(theta) >= 0

so alpha rises with popularity BY CONSTRUCTION, and an item nobody has interacted with
(c = 0: a cold item, or one added at serving time) gets exactly `cold_alpha`, the most
semantic split of all: it has no collaborative evidence, its CF codes are borrowed from a
neighbour. One parameter is learned, the slope: how fast items earn CF tokens. (The first
build's MLP over [popularity, age, sparsity, uncertainty] learned alpha only through the
history side and latched onto age and quantisation error, giving tail items MORE CF tokens
and new items 0.89; popularity alone, monotone, is what the method asks for.)

The router is a two-expert gate, used twice:

  in the item vector   the CF codes' embeddings (all L levels) are weighted 2 * alpha and
                       the semantic codes' 2 * (1 - alpha) (`Router.code_weights`; 1 and 1
                       at the even split), so no code is ever dropped from an item's
                       description: tail items keep their CF codes, which carry
                       co-consumption signal on MovieLens, but lean on the semantic side.
                       The weights enter the next-item losses of every item, as history
                       input and as target, so the slope is trained by what it routes;
                       items whose ids are dropped in a step depend on their codes alone,
                       the signal that says which codebook describes them better.
  in the token sequence n_cf = round_half_up(alpha * L) = floor(alpha * L + 1/2) clamped
                       to [0, L] of the item's L generated tokens are CF codes, the rest
                       semantic (`hard_split`; ties go to CF for every L).

(The paper weights the levels by sigmoid masks of alpha * L instead. Measured here, the
masks took the CF codes of tail items out of their vectors and cost tail accuracy;
BENCHMARKS.md has the comparison.)

Regulariser (`Router.load_balance`): the band-balanced load-balancing loss L_lb =
(mean over popularity bands of the band's mean alpha - lb_target)^2, so the catalogue as a
whole uses both codebooks and a huge head band counts as one band. (The paper's
smoothness term has nothing to do here: a one-parameter monotone curve is smooth.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import Config, check_positive_ints, check_range


@dataclass(frozen=True)
class RouterConfig(Config):
    budget: int = 3  # L, code tokens per item (+1 dedup); GRID found 3 levels best
    # CF share of an item without interactions: the curve's floor. Below 1 / (2L) for
    # every budget up to L = 9, so a new item's tokens are all semantic.
    cold_alpha: float = 0.05
    lb_weight: float = 0.1  # same order as lambda_CCA (the paper gives no lambda_lb)
    lb_target: float = 0.5  # band-averaged CF share aimed for: an even split of the budget
    n_bands: int = 5  # popularity quintiles of log(1 + count): head, tail and between
    # Ablation variants: 0.5 = "fix", 0.0 = "sid-only", 1.0 = "cf-only"; None = learned.
    fixed_alpha: float | None = None

    def __post_init__(self) -> None:
        check_positive_ints(self, "budget", "n_bands")
        check_range(self, "cold_alpha", 0.0, 0.5, low_open=True, high_open=True)
        check_range(self, "lb_weight", 0)
        check_range(self, "lb_target", 0.0, 1.0)
        check_range(
            self,
            "fixed_alpha",
            0.0,
            1.0,
            optional=True,
            hint="(None = learned; 0.5 = fix, 0 = sid-only, 1 = cf-only)",
        )


def _check_counts(counts: np.ndarray | torch.Tensor) -> None:
    values = np.asarray(counts.detach().cpu() if isinstance(counts, torch.Tensor) else counts)
    if values.ndim != 1:
        raise ValueError(f"counts must be a 1-d array, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
        raise ValueError("counts must be finite numbers")
    if np.any(values < 0):
        raise ValueError("counts must be >= 0")


def popularity_bands(train_counts: np.ndarray, n_bands: int) -> np.ndarray:
    """(N+1,) int64 band per item id; band 0 = coldest, n_bands - 1 = head.

    Edges are the quantiles q = b / n_bands, b = 1..n_bands-1, of log(1 + c_i) over items
    1..N (row 0, padding, is left out of the fit and gets band 0). Item i's band is the
    number of edges strictly below log(1 + c_i), so equal counts always share a band and
    the least popular items (e.g. all cold ones) are in band 0. With many ties some bands
    can be empty; the load-balancing loss averages over the bands that are present.
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(f"train_counts must be (N+1,) with N >= 1, got {counts.shape}")
    _check_counts(counts)
    if isinstance(n_bands, bool) or not isinstance(n_bands, int) or n_bands < 1:
        raise ValueError(f"n_bands must be a positive int, got {n_bands!r}")
    log_c = np.log1p(counts.astype(np.float64))
    edges = np.quantile(log_c[1:], np.arange(1, n_bands) / n_bands)  # (n_bands - 1,)
    bands = np.searchsorted(edges, log_c, side="left").astype(np.int64)
    bands[0] = 0
    return bands


class Router(nn.Module):
    """PATA: counts -> alpha (the CF share) -> code weights (item vectors) and the hard
    split of the generated tokens."""

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        # softplus(raw_slope) = 1 until `init_slope` fits it to a catalogue.
        self.raw_slope = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
        self.raw_slope.requires_grad_(config.fixed_alpha is None)

    @property
    def learned(self) -> bool:
        return self.config.fixed_alpha is None

    @property
    def device(self) -> torch.device:
        return self.raw_slope.device

    @property
    def slope(self) -> torch.Tensor:
        return F.softplus(self.raw_slope)

    @torch.no_grad()
    def init_slope(self, train_counts: np.ndarray) -> Router:
        """Start where the median warm item gets alpha = 1/2 (the fix split): the learned
        slope then says whether popularity should buy CF tokens faster or slower."""
        counts = np.asarray(train_counts, dtype=np.float64)
        _check_counts(counts)
        warm = counts[1:][counts[1:] > 0]
        if warm.size == 0:
            raise ValueError("init_slope needs at least one item with interactions")
        median = max(float(np.median(np.log1p(warm))), 1e-3)
        slope = -math.log(self.config.cold_alpha / (1 - self.config.cold_alpha)) / median
        self.raw_slope.copy_(torch.tensor(math.log(math.expm1(slope))))
        return self

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        """counts: (B,) training interactions (float or int, >= 0) -> alpha (B,) float32.

        Learned: the monotone curve of the module docstring, with gradients to the slope.
        Fixed: the constant config.fixed_alpha (cold items included: the ablations write
        every item the same way)."""
        if counts.ndim != 1:
            raise ValueError(f"counts must be (B,), got {tuple(counts.shape)}")
        counts = counts.float()
        if not self.learned:
            return torch.full_like(counts, float(self.config.fixed_alpha))
        floor = math.log(self.config.cold_alpha / (1 - self.config.cold_alpha))
        return torch.sigmoid(floor + self.slope * torch.log1p(counts.clamp(min=0)))

    def code_weights(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (B,) -> (cf_weight (B, L), sem_weight (B, L)): 2 * alpha for every CF level,
        2 * (1 - alpha) for every semantic level. Differentiable in alpha."""
        if alpha.ndim != 1:
            raise ValueError(f"alpha must be (B,), got {tuple(alpha.shape)}")
        ones = alpha.new_ones(alpha.shape[0], self.config.budget)
        return 2.0 * alpha[:, None] * ones, 2.0 * (1.0 - alpha[:, None]) * ones

    @torch.no_grad()
    def hard_split(self, alpha: torch.Tensor) -> torch.Tensor:
        """alpha (B,) -> n_cf (B,) int64 = floor(alpha * L + 1/2) clamped to [0, L] (round
        half up: ties go to CF). The item gets n_cf CF and L - n_cf semantic tokens."""
        if alpha.ndim != 1:
            raise ValueError(f"alpha must be (B,), got {tuple(alpha.shape)}")
        budget = self.config.budget
        n_cf = torch.floor(alpha.double() * budget + 0.5)
        return n_cf.clamp(0, budget).to(torch.int64)

    def load_balance(self, alpha: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """The weighted L_lb of the module docstring, a scalar (0 for a fixed router).

        alpha: (B,) over the catalogue (row 0, padding, excluded by the caller);
        band: (B,) int64 from `popularity_bands`."""
        if alpha.shape != band.shape or alpha.ndim != 1:
            raise ValueError(
                f"alpha and band must both be (B,), got {tuple(alpha.shape)}, {tuple(band.shape)}"
            )
        if not self.learned or alpha.shape[0] == 0:
            return alpha.new_zeros(())
        present, inverse = torch.unique(band, return_inverse=True)  # (P,), (B,)
        sums = alpha.new_zeros(present.shape[0]).index_add(0, inverse, alpha)
        sizes = torch.bincount(inverse, minlength=present.shape[0]).to(alpha.dtype)
        usage = (sums / sizes).mean()
        return self.config.lb_weight * (usage - self.config.lb_target) ** 2
