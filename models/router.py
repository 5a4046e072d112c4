"""Popularity-aware token allocation (the paper's PATA): how many of an item's L tokens
come from the collaborative codebook (C_CF) and how many from the semantic one (C_SEM).

Per item i the router reads raw features x_i (see `router_features`), standardises them
with buffers fitted on warm items (`FeatureScaler`, saved with the weights so a new item
at serving time gets the same transform), and a shallow MLP gives two expert logits
(CF, SEM). alpha_i = softmax(logits / temperature)[CF] is the CF share.

Training (soft): Lbar_col = alpha * L, Lbar_sem = L - Lbar_col = (1 - alpha) * L and,
for level positions k = 1..L of each codebook,

    m_col[k] = sigmoid((Lbar_col - (k - 1/2)) / tau_m)
    m_sem[k] = sigmoid((Lbar_sem - (k - 1/2)) / tau_m)

Inference (hard): n_cf = round_half_up(alpha * L) = floor(alpha * L + 1/2) clamped to
[0, L], n_sem = L - n_cf; hard masks are 1[k <= n_cf] and 1[k <= n_sem].

Rounding convention, and why training and inference agree: the soft masks use the RAW
alpha * L (the paper's formula, no straight-through rounding). As tau_m -> 0,
m_col[k] -> 1[alpha*L > k - 1/2] = 1[k <= round(alpha*L)] and
m_sem[k] -> 1[L - alpha*L > k - 1/2] = 1[k <= L - round(alpha*L)] whenever alpha*L is not
a half-integer, i.e. exactly the hard layout, with n_cf + n_sem = L. At any tau_m the
soft budget is exact too: m_sem[k] = 1 - m_col[L + 1 - k], so sum(m_col) + sum(m_sem) = L.
At an exact half-integer (e.g. the "fix" variant alpha = 0.5 with odd L) both codebooks'
boundary position gets mask 1/2 in training, and the hard split rounds HALF UP, i.e. the
tie goes to CF: alpha = 0.5, L = 5 -> 3 CF + 2 SEM tokens (L = 3 -> 2 + 1). Half up rather
than Python's/torch's half-to-even so the tie goes the same way for every budget L.

Regularisers (`Router.regularisers`, all documented there): a band-balanced load
balancing loss L_lb and a k-nearest-neighbour smoothness loss L_smooth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

SECONDS_PER_DAY = 86_400.0
FEATURE_NAMES = ("log_popularity", "age_days", "sparsity", "uncertainty")


@dataclass(frozen=True)
class RouterConfig:
    n_features: int = 4  # x_i = [log popularity, age, sparsity, uncertainty] (router_features)
    hidden_dim: int = 32  # "shallow MLP": one hidden layer; 4 inputs need little width
    temperature: float = 1.0  # softmax over the two experts; 1 = plain softmax (paper gives none)
    budget: int = 5  # L, the paper's default token budget per item
    mask_tau: float = 0.1  # tau_m of the sigmoid masks, the paper's value
    # The paper gives no lambda_lb. Same order as lambda_CCA: strong enough to stop the
    # generation loss from pushing every band to one codebook, weak enough (the loss is a
    # squared share deviation, at most 0.25) not to override the per-band preference.
    lb_weight: float = 0.1
    lb_target: float = 0.5  # band-averaged CF share aimed for: an even split of the budget
    n_bands: int = 5  # popularity quintiles of log(1 + count): head, tail and between
    smooth_weight: float = 0.01  # the paper's default lambda_smooth
    smooth_k: int = 5  # neighbours per item in L_smooth: local, yet not a single noisy pair
    # Ablation variants: 0.5 = "fix", 0.0 = "sid-only", 1.0 = "cf-only"; None = learned.
    fixed_alpha: float | None = None

    def __post_init__(self) -> None:
        for name in ("n_features", "hidden_dim", "budget", "n_bands", "smooth_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RouterConfig.{name} must be a positive int, got {value!r}")
        for name in ("temperature", "mask_tau"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RouterConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("lb_weight", "smooth_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"RouterConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.lb_target <= 1.0:
            raise ValueError(f"RouterConfig.lb_target must be in [0, 1], got {self.lb_target}")
        if self.fixed_alpha is not None and not 0.0 <= self.fixed_alpha <= 1.0:
            raise ValueError(
                f"RouterConfig.fixed_alpha must be None (learned) or in [0, 1] "
                f"(0.5 = fix, 0 = sid-only, 1 = cf-only), got {self.fixed_alpha}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RouterConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"RouterConfig.from_dict: unknown keys {unknown}; knows {sorted(names)}"
            )
        return cls(**data)


def _check_counts_values(counts: np.ndarray) -> None:
    if not np.issubdtype(counts.dtype, np.number) or not np.all(np.isfinite(counts)):
        raise ValueError("train_counts must be finite numbers")
    if np.any(counts < 0):
        raise ValueError("train_counts must be >= 0")


def router_features(
    train_counts: np.ndarray,
    first_seen: np.ndarray | None,
    last_time: float | None,
    n_users: int,
    uncertainty: np.ndarray | None = None,
) -> np.ndarray:
    """Raw router features, one row per item id (row 0 = padding, treated as a cold item).

    train_counts: (N+1,) training interactions per item, c_i >= 0.
    first_seen: (N+1,) timestamp (seconds) of each item's first training interaction, or
        None (then every age is 0). Entries of items with c_i = 0 are ignored (may be NaN).
    last_time: reference time in seconds (e.g. the last training timestamp); required
        when first_seen is given.
    n_users: number of training users, > 0.
    uncertainty: (N+1,) e.g. the item's CF quantisation error, or None (column of 0).
        Non-finite entries (e.g. NaN for items without a trained CF embedding) are
        replaced by the mean over warm items' finite entries (0 if there are none).

    Returns (N+1, 4) float32, columns (exact definitions):
      0 log_popularity = log((1 + c_i) / n_users). The smoothed log share of users; it is
        log(1 + c_i) minus a constant, so after standardisation it equals the log count
        that `popularity_bands` uses. Chosen over the literal log(1 + f_i) with
        f_i = c_i / n_users <= 1, where log(1 + f) ~ f would not compress the heavy tail.
      1 age_days = (last_time - first_seen_i) / 86400 for c_i > 0, else 0.
      2 sparsity = 1 / (1 + r_i), r_i = c_i / (age_days_i + 1): inverse interaction
        density, with density = interactions per day of the item's life (+1 day so an item
        first seen at last_time is defined). In (0, 1]; exactly 1 (the maximum) iff c_i = 0.
      3 uncertainty as given (see above).
    A cold item (c_i = 0) thus gets [-log(n_users), 0, 1, given or warm mean]: finite.
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1 or counts.shape[0] < 1:
        raise ValueError(f"train_counts must be a non-empty (N+1,) array, got {counts.shape}")
    _check_counts_values(counts)
    if isinstance(n_users, bool) or int(n_users) != n_users or n_users < 1:
        raise ValueError(f"n_users must be a positive int, got {n_users!r}")
    counts = counts.astype(np.float64)
    n = counts.shape[0]
    warm = counts > 0

    age = np.zeros(n, dtype=np.float64)
    if first_seen is not None:
        seen = np.asarray(first_seen, dtype=np.float64)
        if seen.shape != (n,):
            raise ValueError(f"first_seen must have shape ({n},), got {seen.shape}")
        if last_time is None or not np.isfinite(last_time):
            raise ValueError("last_time must be a finite time in seconds when first_seen is given")
        if not np.all(np.isfinite(seen[warm])):
            raise ValueError("first_seen must be finite for every item with train_counts > 0")
        age[warm] = (float(last_time) - seen[warm]) / SECONDS_PER_DAY
        if np.any(age < 0):
            raise ValueError("first_seen is after last_time for some items: check last_time")

    log_pop = np.log((1.0 + counts) / float(n_users))
    sparsity = 1.0 / (1.0 + counts / (age + 1.0))

    if uncertainty is None:
        unc = np.zeros(n, dtype=np.float64)
    else:
        unc = np.asarray(uncertainty, dtype=np.float64).copy()
        if unc.shape != (n,):
            raise ValueError(f"uncertainty must have shape ({n},), got {unc.shape}")
        finite = np.isfinite(unc)
        ref = finite & warm
        fill = float(unc[ref].mean()) if ref.any() else 0.0
        unc[~finite] = fill
    return np.stack([log_pop, age, sparsity, unc], axis=1).astype(np.float32)


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
    _check_counts_values(counts)
    if isinstance(n_bands, bool) or not isinstance(n_bands, int) or n_bands < 1:
        raise ValueError(f"n_bands must be a positive int, got {n_bands!r}")
    log_c = np.log1p(counts.astype(np.float64))
    edges = np.quantile(log_c[1:], np.arange(1, n_bands) / n_bands)  # (n_bands - 1,)
    bands = np.searchsorted(edges, log_c, side="left").astype(np.int64)
    bands[0] = 0
    return bands


class FeatureScaler(nn.Module):
    """Standardisation (x - mean) / std with mean and std fitted on warm items (buffers).

    Cold items are left out of the fit: they all share one feature vector, and a large
    cold share would otherwise set the scale. Columns with std < 1e-6 (e.g. age when no
    timestamps are given) get std 1, so they map to a constant instead of inf.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(
        self, features: np.ndarray | torch.Tensor, warm: np.ndarray | torch.Tensor | None = None
    ):
        """features: (N, F) raw. warm: (N,) bool, or None = rows with at least one
        interaction, read off the sparsity column (exactly 1 iff count 0) when F = 4 and the
        columns are `router_features`', else all rows. Needs >= 2 warm rows."""
        x = torch.as_tensor(features, dtype=torch.float32).to(self.mean.device)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be (N, {self.mean.shape[0]}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        if warm is None:
            if x.shape[1] == len(FEATURE_NAMES):
                keep = x[:, FEATURE_NAMES.index("sparsity")] < 1.0
            else:
                keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        else:
            keep = torch.as_tensor(warm, device=x.device)
            if keep.dtype != torch.bool or keep.shape != (x.shape[0],):
                raise ValueError(f"warm must be a ({x.shape[0]},) bool mask")
        if int(keep.sum()) < 2:
            raise ValueError("fitting the feature scaler needs at least 2 warm items")
        xs = x[keep]
        std = xs.std(dim=0)
        self.mean.copy_(xs.mean(dim=0))
        self.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))
        self.fitted.fill_(True)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) raw -> (B, F) standardised."""
        return (features - self.mean) / self.std


class Router(nn.Module):
    """PATA: features -> alpha (the CF share) -> soft masks (training) / hard split (serving)."""

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        self.scaler = FeatureScaler(config.n_features)
        if config.fixed_alpha is None:
            self.mlp: nn.Sequential | None = nn.Sequential(
                nn.Linear(config.n_features, config.hidden_dim),
                nn.GELU(),
                nn.Linear(config.hidden_dim, 2),  # logits of the (CF, SEM) experts
            )
            # Zero last layer: every item starts at alpha = 0.5, the neutral "fix" split,
            # so any popularity dependence is learned, not an accident of the init.
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        else:
            self.mlp = None  # constant alpha: no parameters
        self.register_buffer(
            "positions", torch.arange(1, config.budget + 1, dtype=torch.float32) - 0.5
        )  # (L,) k - 1/2 for k = 1..L

    def fit_scaler(
        self, features: np.ndarray | torch.Tensor, warm: np.ndarray | torch.Tensor | None = None
    ) -> Router:
        """Fit the standardisation buffers on raw (N, F) features; see FeatureScaler.fit."""
        self.scaler.fit(features, warm)
        return self

    def _check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.config.n_features:
            raise ValueError(
                f"features must be (B, {self.config.n_features}), got {tuple(features.shape)}"
            )

    def _check_alpha(self, alpha: torch.Tensor) -> None:
        if alpha.ndim != 1:
            raise ValueError(f"alpha must be (B,), got {tuple(alpha.shape)}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, F) RAW (unstandardised) -> alpha (B,), the CF share.

        Learned: in (0, 1) (up to float saturation), needs `fit_scaler` (or loaded buffers)
        first. Fixed: the constant config.fixed_alpha, with no gradient.
        """
        self._check_features(features)
        dtype = features.dtype if features.is_floating_point() else torch.float32
        if self.mlp is None:
            return torch.full(
                (features.shape[0],),
                float(self.config.fixed_alpha),
                dtype=dtype,
                device=features.device,
            )
        if not bool(self.scaler.fitted):
            raise ValueError("Router.forward before fit_scaler: fit it on warm items' features")
        logits = self.mlp(self.scaler(features.float()))  # (B, 2)
        return torch.softmax(logits / self.config.temperature, dim=-1)[:, 0].to(dtype)

    def soft_masks(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (B,) -> (cf_mask (B, L), sem_mask (B, L)), sigmoid masks over the level
        positions k = 1..L of each codebook (module docstring). Differentiable in alpha."""
        self._check_alpha(alpha)
        budget = float(self.config.budget)
        lbar_col = alpha.unsqueeze(1) * budget  # (B, 1) soft CF token count
        lbar_sem = budget - lbar_col  # (B, 1) = (1 - alpha) * L
        pos = self.positions.to(alpha.dtype)  # (L,)
        cf = torch.sigmoid((lbar_col - pos) / self.config.mask_tau)  # (B, L)
        sem = torch.sigmoid((lbar_sem - pos) / self.config.mask_tau)  # (B, L)
        return cf, sem

    @torch.no_grad()
    def hard_split(self, alpha: torch.Tensor) -> torch.Tensor:
        """alpha (B,) -> n_cf (B,) int64 = floor(alpha * L + 1/2) clamped to [0, L] (round
        half up: ties go to CF). The item gets n_cf CF and L - n_cf semantic tokens."""
        self._check_alpha(alpha)
        budget = self.config.budget
        n_cf = torch.floor(alpha.double() * budget + 0.5)
        return n_cf.clamp(0, budget).to(torch.int64)

    @torch.no_grad()
    def hard_masks(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (B,) -> (cf_mask (B, L), sem_mask (B, L)) float 0/1 of the hard split:
        1[k <= n_cf] and 1[k <= L - n_cf]; the tau_m -> 0 limit of `soft_masks`."""
        n_cf = self.hard_split(alpha).unsqueeze(1)  # (B, 1)
        k = torch.arange(1, self.config.budget + 1, device=alpha.device)  # (L,)
        dtype = alpha.dtype if alpha.is_floating_point() else torch.float32
        cf = (k <= n_cf).to(dtype)
        sem = (k <= self.config.budget - n_cf).to(dtype)
        return cf, sem

    def regularisers(
        self, alpha: torch.Tensor, features: torch.Tensor, band: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The router's losses on a batch of B items (ideally the catalog or a large sample).

        alpha: (B,) from forward; features: (B, F) raw; band: (B,) int from popularity_bands.
        Returns scalars {"lb", "smooth"} UNWEIGHTED (for logging) and
        "total" = lb_weight * lb + smooth_weight * smooth, the term to add to the loss.
        A fixed-alpha router has nothing to regularise: all three are 0.

        lb (load balancing, equal weight per popularity band):
            abar_b = mean of alpha over the batch items in band b, for the P bands present;
            u = (1/P) * sum_b abar_b, the band-averaged CF share;
            L_lb = (u - lb_target)^2.
          It constrains only the catalog-wide balance: head bands may take more CF and
          tail bands more SEM as long as they balance. A huge head band counts as one band.
        smooth (k-nearest neighbours in standardised feature space, within the batch):
            N_k(i) = the k = min(smooth_k, B - 1) nearest other items j to i by Euclidean
            distance of the scaler's standardised features (ties broken arbitrarily);
            L_smooth = mean over i and j in N_k(i) of (alpha_i - alpha_j)^2.
          O(B^2) memory for the distances. 0 when B < 2.
        """
        self._check_alpha(alpha)
        self._check_features(features)
        if band.ndim != 1 or band.shape[0] != alpha.shape[0] or features.shape[0] != alpha.shape[0]:
            raise ValueError(
                f"alpha (B,), features (B, F) and band (B,) must share B, got "
                f"{tuple(alpha.shape)}, {tuple(features.shape)}, {tuple(band.shape)}"
            )
        if band.is_floating_point() or band.dtype == torch.bool:
            raise ValueError(f"band must be an integer tensor, got {band.dtype}")
        zero = alpha.new_zeros(())
        if self.mlp is None or alpha.shape[0] == 0:
            return {"lb": zero, "smooth": zero, "total": zero}
        cfg = self.config

        present, inverse = torch.unique(band, return_inverse=True)  # (P,), (B,)
        sums = alpha.new_zeros(present.shape[0]).index_add(0, inverse, alpha)  # (P,)
        sizes = torch.bincount(inverse, minlength=present.shape[0]).to(alpha.dtype)  # (P,)
        usage = (sums / sizes).mean()
        lb = (usage - cfg.lb_target) ** 2

        b = alpha.shape[0]
        if b < 2:
            smooth = zero
        else:
            k = min(cfg.smooth_k, b - 1)
            with torch.no_grad():
                z = self.scaler(features.float())  # (B, F)
                dist = torch.cdist(z, z)  # (B, B)
                dist.fill_diagonal_(float("inf"))
                neighbours = dist.topk(k, dim=1, largest=False).indices  # (B, k)
            smooth = ((alpha.unsqueeze(1) - alpha[neighbours]) ** 2).mean()
        total = cfg.lb_weight * lb + cfg.smooth_weight * smooth
        return {"lb": lb, "smooth": smooth, "total": total}
