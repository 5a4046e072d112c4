"""RQ-VAE item tokenizer: an embedding -> L codes, one per residual level.

FlexCode trains two of these, one over the collaborative item table (64-d SASRec
embeddings) and one over the semantic text embeddings (384-d, L2-normalised MiniLM).
An MLP encoder maps an embedding to a d-dim latent; a residual quantizer picks, level by
level, the nearest of K codewords to what the previous levels left unexplained; an MLP
decoder maps the sum of the chosen codewords back. Item tokens are the chosen code ids.

Codebooks are plain parameters trained by gradient (the VQ-VAE codebook term), not EMA
buffers: one optimizer owns everything, the loss is the one in the papers, and collapse,
the failure mode EMA is usually brought in to soften, is handled directly instead: the
codebooks start from k-means on real latents (`RQVAE.init_codebooks`) and codes that go
unused are re-seeded from real residuals (`ResidualQuantizer.restart_dead_codes`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.config import Config, check_positive_int_tuple, check_positive_ints, check_range


@dataclass(frozen=True)
class RQVAEConfig(Config):
    input_dim: int  # D: 64 for the SASRec item table, 384 for MiniLM text embeddings
    latent_dim: int = 32  # d: small enough for k-means to find structure in ~1k items
    hidden_dims: tuple[int, ...] = (256, 128)  # encoder widths; the decoder mirrors them
    n_levels: int = 6  # L_max: budgets up to L=6 may draw all levels from one codebook
    codebook_size: int = 64  # K: suggest_codebook_size(n_items) fits it to the catalog
    beta: float = 0.25  # commitment weight (VQ-VAE / RQ-VAE papers)
    # A code is dead when used fewer than this many times since the last restart: 1 means
    # "never picked", so rare but real codes of small catalogs are not churned.
    dead_code_threshold: float = 1.0

    def __post_init__(self) -> None:
        # A config read back from JSON carries a list; keep the field hashable.
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        check_positive_ints(self, "input_dim", "latent_dim", "n_levels", "codebook_size")
        check_positive_int_tuple(self, "hidden_dims")
        check_range(self, "beta", 0)
        check_range(self, "dead_code_threshold", 0, hint="(0 disables restarts)")


def suggest_codebook_size(n_items: int) -> int:
    """Codes per level sized to the catalog: a power of two near n_items/16, clamped to [16, 512]
    (the paper's K=512 is for 10k+ item catalogs; ~1.3k items need far fewer codes per level).

    "Near" is in log space: 1349 items -> 84 -> 64; 10_000 -> 625 -> 512 (the clamp).
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1 (the catalog size), got {n_items}")
    exponent = round(math.log2(n_items / 16)) if n_items >= 16 else 4
    return int(min(max(2**exponent, 16), 512))


def _squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """x: (N, d), codebook: (K, d) -> (N, K) squared L2 distances (expanded form, one matmul)."""
    return (
        x.pow(2).sum(1, keepdim=True)  # (N, 1)
        - 2 * x @ codebook.T  # (N, K)
        + codebook.pow(2).sum(1)[None]  # (1, K)
    )


def _rng_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where random draws happen: on the generator's device (training seeds a CPU generator
    also when it trains on CUDA, so a seed picks the same points on every device), or on
    the data's device when no generator is given. Draws then move to the data."""
    return device if generator is None else generator.device


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """x: (N, d) with N >= k -> (k, d) seeds, each drawn with probability ~ squared distance
    to the nearest seed so far (Arthur & Vassilvitskii, 2007): spreads seeds over clusters."""
    n = x.shape[0]
    rng = _rng_device(generator, x.device)
    first = torch.randint(n, (1,), generator=generator, device=rng).to(x.device)
    seeds = [x[first]]  # list of (1, d)
    nearest = _squared_distances(x, seeds[0]).squeeze(1).clamp_min(0)  # (N,)
    for _ in range(1, k):
        # All remaining points coincide with a seed: any choice is as good as another.
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        idx = torch.multinomial(weights.to(rng), 1, generator=generator).to(x.device)
        seeds.append(x[idx])
        nearest = torch.minimum(nearest, _squared_distances(x, x[idx]).squeeze(1).clamp_min(0))
    return torch.cat(seeds)  # (k, d)


def _kmeans(
    x: torch.Tensor, k: int, n_iter: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Lloyd's k-means from k-means++ seeds. x: (N, d), N >= k distinct rows -> (k, d)."""
    centroids = _kmeans_plus_plus(x, k, generator)  # (k, d)
    for _ in range(n_iter):
        assign = _squared_distances(x, centroids).argmin(1)  # (N,)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)  # (k,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # (k, d)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = (~filled).nonzero().squeeze(1)
        if len(empty):
            # An empty cluster takes the points worst served so far, so no code is wasted.
            err = _squared_distances(x, centroids).min(1).values  # (N,)
            centroids[empty] = x[err.topk(len(empty)).indices]
    return centroids


class ResidualQuantizer(nn.Module):
    """L levels of K codewords in d dims; level l quantises what levels < l left over.

    codebooks: (L, K, d) parameter, trained by the codebook loss term (see module docstring).
    usage_counts: (L, K) buffer, how often each code was picked by training forwards since
    the last `restart_dead_codes`; it is the usage window of the dead-code rule.
    """

    def __init__(self, config: RQVAEConfig) -> None:
        super().__init__()
        self.config = config
        shape = (config.n_levels, config.codebook_size, config.latent_dim)
        # Small random codewords: a placeholder until init_kmeans puts them on real latents.
        self.codebooks = nn.Parameter(torch.randn(shape) / config.latent_dim**0.5)
        self.register_buffer("usage_counts", torch.zeros(config.n_levels, config.codebook_size))

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(
                f"expected latents of shape (B, {self.config.latent_dim}), got "
                f"{tuple(z.shape)}; pass encoder outputs, one row per item"
            )

    def _nearest(self, residual: torch.Tensor, level: int) -> torch.Tensor:
        """residual: (B, d) -> (B,) index of the nearest codeword at this level."""
        return _squared_distances(residual, self.codebooks[level].detach()).argmin(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (B, d) -> (z_q (B, d) straight-through, codes (B, L) int64, quantisation loss).

        loss = sum over levels of mean ||sg[r_l] - e_l||^2 + beta * mean ||r_l - sg[e_l]||^2.
        """
        self._check_latents(z)
        residual = z  # (B, d)
        quantised = torch.zeros_like(z)  # (B, d)
        codes, loss = [], z.new_zeros(())
        for level in range(self.config.n_levels):
            idx = self._nearest(residual, level)  # (B,)
            e = self.codebooks[level][idx]  # (B, d)
            loss = loss + F.mse_loss(e, residual.detach())  # pulls codewords to the data
            loss = loss + self.config.beta * F.mse_loss(residual, e.detach())  # commits z
            quantised = quantised + e
            # Detached so the commitment term of later levels trains the encoder only,
            # not the codewords of earlier levels.
            residual = residual - e.detach()
            codes.append(idx)
        codes = torch.stack(codes, dim=1)  # (B, L)
        if self.training:
            self.usage_counts += self.usage(codes)
        # Straight-through: the decoder sees the codewords, the encoder gets its gradient.
        z_q = z + (quantised - z).detach()  # (B, d)
        return z_q, codes, loss

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, d) -> codes (B, L), the nearest code per level on the running residual."""
        self._check_latents(z)
        residual = z.clone()  # (B, d)
        codes = []
        for level in range(self.config.n_levels):
            idx = self._nearest(residual, level)  # (B,)
            residual -= self.codebooks[level][idx]
            codes.append(idx)
        return torch.stack(codes, dim=1)  # (B, L)

    def decode(self, codes: torch.Tensor, n_levels: int | None = None) -> torch.Tensor:
        """codes: (B, >= n_levels) -> (B, d), the sum of the first n_levels codewords.

        n_levels defaults to the number of code columns, so a budget-L prefix decodes as is.
        """
        n_levels = codes.shape[-1] if n_levels is None else n_levels
        if codes.dim() != 2 or not 1 <= n_levels <= min(codes.shape[1], self.config.n_levels):
            raise ValueError(
                f"need codes of shape (B, >= n_levels) and 1 <= n_levels <= "
                f"{self.config.n_levels}; got codes {tuple(codes.shape)}, n_levels={n_levels}"
            )
        codes = codes[:, :n_levels].long()  # (B, n)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.config.codebook_size}); got values in "
                f"[{int(codes.min())}, {int(codes.max())}]: were they made by another codebook?"
            )
        levels = torch.arange(n_levels, device=codes.device)  # (n,)
        return self.codebooks[levels[None], codes].sum(1)  # (B, n, d) -> (B, d)

    def usage(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, L) -> (L, K) float counts of how often each code occurs at each level."""
        n_levels, k = codes.shape[1], self.config.codebook_size
        flat = codes.T + k * torch.arange(n_levels, device=codes.device)[:, None]  # (L, B)
        counts = torch.bincount(flat.reshape(-1), minlength=n_levels * k)
        return counts.view(n_levels, k).to(self.usage_counts.dtype)

    @torch.no_grad()
    def init_kmeans(
        self, z: torch.Tensor, n_iter: int = 20, generator: torch.Generator | None = None
    ) -> None:
        """Fill every level's codebook by k-means on the residuals of real latents z: (N, d).

        Level by level: cluster the current residuals (k-means++ seeds, deterministic given
        `generator`), use the centroids as that level's codes, subtract each point's
        centroid. With fewer distinct residuals than K, each distinct one becomes a code
        and the rest are jittered copies, so no code starts far from the data.
        """
        self._check_latents(z)
        k = self.config.codebook_size
        residual = z.detach().clone().to(self.codebooks.dtype)  # (N, d)
        for level in range(self.config.n_levels):
            distinct = torch.unique(residual, dim=0)  # (M, d)
            if distinct.shape[0] >= k:
                centroids = _kmeans(distinct, k, n_iter, generator)  # (K, d)
            else:
                extra = k - distinct.shape[0]
                rng = _rng_device(generator, z.device)
                pick = torch.randint(distinct.shape[0], (extra,), generator=generator, device=rng)
                pick = pick.to(z.device)
                centroids = torch.cat([distinct, self._jitter(distinct[pick], residual, generator)])
            self.codebooks[level] = centroids
            residual -= centroids[self._nearest(residual, level)]
        self.usage_counts.zero_()

    @staticmethod
    def _jitter(
        points: torch.Tensor, reference: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """points + noise at 1% of the reference spread (floored, so identical rows split)."""
        scale = 1e-2 * reference.std().clamp_min(1e-3) if reference.numel() > 1 else 1e-5
        rng = _rng_device(generator, points.device)
        noise = torch.randn(points.shape, generator=generator, device=rng).to(points.device)
        return points + scale * noise.to(points.dtype)

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-seed codes used fewer than `dead_code_threshold` times since the last restart.

        Each dead code at level l moves onto a randomly chosen residual of z: (N, d) at that
        level (plus tiny noise, so two restarts on one point stay distinct), where it is
        sure to win at least that point. Levels go in order and each residual is computed
        with the already-restarted earlier levels. Resets the usage window and returns the
        number of codes re-seeded. Optimizer moments of the moved codes are left as they are:
        dead codes got no gradient, so theirs have decayed towards zero anyway.
        """
        self._check_latents(z)
        residual = z.detach().clone().to(self.codebooks.dtype)  # (N, d)
        n_restarted = 0
        for level in range(self.config.n_levels):
            dead = (self.usage_counts[level] < self.config.dead_code_threshold).nonzero()
            dead = dead.squeeze(1)  # (n_dead,)
            if len(dead) and residual.shape[0]:
                n = residual.shape[0]
                rng = _rng_device(generator, z.device)
                if n >= len(dead):  # distinct points where possible
                    pick = torch.randperm(n, generator=generator, device=rng)[: len(dead)]
                else:
                    pick = torch.randint(n, (len(dead),), generator=generator, device=rng)
                pick = pick.to(z.device)
                self.codebooks[level, dead] = self._jitter(residual[pick], residual, generator)
                n_restarted += len(dead)
            residual -= self.codebooks[level][self._nearest(residual, level)]
        self.usage_counts.zero_()
        return n_restarted


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear -> GELU stacks through dims; the last layer is linear (latents/outputs are
    unbounded). No dropout: encoding must be deterministic and the catalogs are small."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(dims) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class RQVAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, D) reconstruction through the straight-through path
    z: torch.Tensor  # (B, d) encoder latents, before quantisation
    codes: torch.Tensor  # (B, L) int64 code ids, the item's tokens
    loss: torch.Tensor  # recon_loss + quant_loss, what the trainer minimises
    recon_loss: torch.Tensor  # mean squared error of x_hat against x
    quant_loss: torch.Tensor  # codebook + beta * commitment, summed over levels


class RQVAE(nn.Module):
    def __init__(self, config: RQVAEConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(dims)
        self.quantizer = ResidualQuantizer(config)
        self.decoder = _mlp(dims[::-1])

    def _check_inputs(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.config.input_dim:
            raise ValueError(
                f"expected embeddings of shape (B, {self.config.input_dim}), got "
                f"{tuple(x.shape)}; set RQVAEConfig.input_dim to the embedding width"
            )

    def forward(self, x: torch.Tensor) -> RQVAEOutput:
        """x: (B, D) item embeddings -> RQVAEOutput (loss = recon MSE + quantisation loss)."""
        self._check_inputs(x)
        z = self.encoder(x)  # (B, d)
        z_q, codes, quant_loss = self.quantizer(z)  # (B, d), (B, L), ()
        x_hat = self.decoder(z_q)  # (B, D)
        recon_loss = F.mse_loss(x_hat, x)
        return RQVAEOutput(x_hat, z, codes, recon_loss + quant_loss, recon_loss, quant_loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) -> codes (B, L). Deterministic (no dropout, argmin ties go to the
        lowest id); call in eval mode so the result does not depend on the caller."""
        self._check_inputs(x)
        return self.quantizer.encode(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, n_levels: int | None = None) -> torch.Tensor:
        """codes: (B, >= n_levels) -> x_hat (B, D) from the first n_levels codewords."""
        return self.decoder(self.quantizer.decode(codes, n_levels))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) -> x_hat (B, D) with gradients through the straight-through path."""
        return self.forward(x).x_hat

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """k-means the codebooks on the encoder latents of real embeddings x: (N, D).
        Call before training (and whenever the encoder has moved far), to avoid collapse."""
        self._check_inputs(x)
        self.quantizer.init_kmeans(self.encoder(x), generator=generator)
