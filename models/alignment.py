"""Cross-codebook alignment (the paper's CCA): projection heads + symmetric InfoNCE.

Two heads map an item's RECONSTRUCTED semantic and collaborative embeddings (the RQ-VAE
decoder outputs, so the loss acts on what the codes actually preserve) into one shared,
L2-normalised space; InfoNCE with in-batch negatives pulls an item's two projections
together and pushes other items' apart. The aligned space also serves cold-start: a new
item's SEM projection finds warm neighbours whose CF codes it can borrow.

`CrossCodebookAlignment.forward` returns the UNWEIGHTED loss L_CCA; the trainer adds
`config.weight * loss` to the total (weight 0 is the no-align ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import Config, check_positive_ints, check_range


@dataclass(frozen=True)
class AlignmentConfig(Config):
    sem_dim: int  # size of the reconstructed semantic embedding (the SEM RQ-VAE's input)
    cf_dim: int  # size of the reconstructed collaborative embedding (the CF RQ-VAE's input)
    proj_dim: int = 64  # shared space; the paper's latent size d = 64
    hidden_dim: int = 128  # one hidden layer: a "simple MLP" head, as the paper describes
    # The paper gives no tau. 0.1 is the usual value for InfoNCE on L2-normalised vectors
    # (SimCLR's temperature ablation favours 0.1 with l2 norm; MoCo/CLIP use 0.07); a
    # large tau (e.g. 1) makes the loss nearly flat in the similarities.
    temperature: float = 0.1
    weight: float = 0.1  # lambda_CCA, the paper's default and best value; 0 = no-align

    def __post_init__(self) -> None:
        check_positive_ints(self, "sem_dim", "cf_dim", "proj_dim", "hidden_dim")
        check_range(self, "temperature", 0, low_open=True)
        check_range(self, "weight", 0, hint="(lambda_CCA; 0 = no-align)")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; row i of a and row i of b are a pair.

    a, b: (B, P); they are L2-normalised here (a no-op for head outputs), so logits are
    cosines / temperature. Returns the scalar mean of the a->b and b->a cross-entropies.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be (B, P), got {tuple(a.shape)} and {tuple(b.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(a.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    logits = a @ b.T / temperature  # (B, B); the diagonal holds the positives
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class ProjectionHead(nn.Module):
    """MLP in_dim -> hidden_dim -> proj_dim; output L2-normalised. (B, in_dim) -> (B, P)."""

    def __init__(self, in_dim: int, hidden_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, proj_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class CrossCodebookAlignment(nn.Module):
    """P_sem and P_col of the paper, with the InfoNCE between them."""

    def __init__(self, config: AlignmentConfig) -> None:
        super().__init__()
        self.config = config
        self.sem_head = ProjectionHead(config.sem_dim, config.hidden_dim, config.proj_dim)
        self.cf_head = ProjectionHead(config.cf_dim, config.hidden_dim, config.proj_dim)

    def forward(
        self, sem_recon: torch.Tensor, cf_recon: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sem_recon: (B, sem_dim), cf_recon: (B, cf_dim) reconstructions of the same B items.

        Returns (unweighted L_CCA scalar, z_sem (B, P), z_cf (B, P)). Gradients reach both
        heads and, through the reconstructions, both RQ-VAEs.
        """
        if sem_recon.ndim != 2 or cf_recon.ndim != 2 or sem_recon.shape[0] != cf_recon.shape[0]:
            raise ValueError(
                "sem_recon and cf_recon must be (B, dim) with the same B, got "
                f"{tuple(sem_recon.shape)} and {tuple(cf_recon.shape)}"
            )
        z_sem = self.sem_head(sem_recon)  # (B, P)
        z_cf = self.cf_head(cf_recon)  # (B, P)
        return info_nce(z_sem, z_cf, self.config.temperature), z_sem, z_cf

    @torch.no_grad()
    def project_sem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, sem_dim) -> (B, P) normalised semantic projections."""
        return self.sem_head(x)

    @torch.no_grad()
    def project_cf(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cf_dim) -> (B, P) normalised collaborative projections."""
        return self.cf_head(x)


def _as_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be a (N, P) float array, got {arr.dtype} {arr.shape}")
    return arr


def alignment_ranks(
    z_sem: np.ndarray | torch.Tensor,
    z_cf: np.ndarray | torch.Tensor,
    chunk: int = 4096,
) -> np.ndarray:
    """For each item i, the 0-based rank of its own CF projection among all N items' CF
    projections, queried with its SEM projection (cosine similarity). 0 = perfect.

    z_sem, z_cf: (N, P) (normalised here). Returns (N,) int64. Ties are broken by item
    index, as in training/evaluate.py: rank_i = #{j: s_ij > s_ii} + #{j < i: s_ij == s_ii}.
    Items with bitwise-identical CF projections (colliding CF codes reconstruct to the
    same vector) are treated as exact ties, without trusting float equality.
    Works in (chunk, chunk) blocks, so memory is O(N * P + chunk^2) and any chunk gives
    the same ranks; time is O(N^2 * P).
    """
    sem = _as_numpy(z_sem, "z_sem")
    cf = _as_numpy(z_cf, "z_cf")
    if sem.shape != cf.shape:
        raise ValueError(f"z_sem and z_cf must have the same shape, got {sem.shape} and {cf.shape}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    n_items = sem.shape[0]
    if n_items == 0:
        return np.zeros(0, dtype=np.int64)
    # Group ids of identical CF rows, from the raw values (exact, unlike cosines).
    _, cf_group = np.unique(cf, axis=0, return_inverse=True)
    cf_group = cf_group.reshape(-1)  # (N,)

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sem, cf = unit(sem), unit(cf)  # (N, P)
    positive = np.einsum("ij,ij->i", sem, cf)  # (N,) s_ii
    index = np.arange(n_items)
    ranks = np.zeros(n_items, dtype=np.int64)
    for q0 in range(0, n_items, chunk):
        q = slice(q0, min(q0 + chunk, n_items))
        pos = positive[q, None]  # (Q, 1)
        q_index, q_group = index[q, None], cf_group[q, None]  # (Q, 1)
        for k0 in range(0, n_items, chunk):
            k = slice(k0, min(k0 + chunk, n_items))
            scores = sem[q] @ cf[k].T  # (Q, C) s_ij
            earlier = index[None, k] < q_index  # (Q, C) j < i
            same = cf_group[None, k] == q_group  # (Q, C) identical CF projection (incl. j = i)
            ahead = np.where(same, earlier, (scores > pos) | ((scores == pos) & earlier))
            ranks[q] += ahead.sum(axis=1)
    return ranks
