"""The dual-codebook tokenizer: semantic and collaborative RQ-VAEs plus their alignment.

One module so that training optimises L_SCL + L_CCL + lambda_CCA * L_CCA in one step and
serving loads one set of weights. Inputs are standardised inside the module (buffers
saved with the weights): the MiniLM vectors are unit-norm in 384-d and the SASRec table
has its own scale, and without a shared scale the two reconstruction losses, and thus
the two codebooks, would get very different weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from models.alignment import AlignmentConfig, CrossCodebookAlignment
from models.config import Config
from models.rqvae import RQVAE, RQVAEConfig


@dataclass(frozen=True)
class DualTokenizerConfig(Config):
    sem: RQVAEConfig  # over text embeddings (C_SEM)
    cf: RQVAEConfig  # over SASRec item embeddings (C_CF)
    alignment: AlignmentConfig  # heads on the reconstructions; weight = lambda_CCA

    def __post_init__(self) -> None:
        if self.sem.n_levels != self.cf.n_levels or self.sem.codebook_size != self.cf.codebook_size:
            # The token layout gives every (codebook, level) a block of the same K ids.
            raise ValueError(
                "sem and cf RQ-VAEs must share n_levels and codebook_size, got "
                f"{self.sem.n_levels}x{self.sem.codebook_size} and "
                f"{self.cf.n_levels}x{self.cf.codebook_size}"
            )
        if (self.alignment.sem_dim, self.alignment.cf_dim) != (
            self.sem.input_dim,
            self.cf.input_dim,
        ):
            raise ValueError("alignment sem_dim/cf_dim must equal the RQ-VAEs' input_dim")


class DualTokenizerLoss(NamedTuple):
    total: torch.Tensor
    sem_recon: torch.Tensor
    sem_quant: torch.Tensor
    cf_recon: torch.Tensor
    cf_quant: torch.Tensor
    align: torch.Tensor  # unweighted L_CCA (0 when lambda_CCA = 0)


class DualTokenizer(nn.Module):
    def __init__(self, config: DualTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.sem = RQVAE(config.sem)
        self.cf = RQVAE(config.cf)
        self.align = CrossCodebookAlignment(config.alignment)
        self.register_buffer("sem_mean", torch.zeros(config.sem.input_dim))
        self.register_buffer("sem_scale", torch.ones(()))
        self.register_buffer("cf_mean", torch.zeros(config.cf.input_dim))
        self.register_buffer("cf_scale", torch.ones(()))

    @torch.no_grad()
    def fit_standardisation(self, sem_x: torch.Tensor, cf_x: torch.Tensor) -> None:
        """Centre each input and scale it to unit mean per-dimension variance."""
        for x, mean, scale in (
            (sem_x, self.sem_mean, self.sem_scale),
            (cf_x, self.cf_mean, self.cf_scale),
        ):
            mean.copy_(x.mean(dim=0))
            scale.copy_((x - mean).pow(2).mean().sqrt().clamp_min(1e-8))

    def standardise_sem(self, sem_x: torch.Tensor) -> torch.Tensor:
        return (sem_x - self.sem_mean) / self.sem_scale

    def standardise_cf(self, cf_x: torch.Tensor) -> torch.Tensor:
        return (cf_x - self.cf_mean) / self.cf_scale

    @torch.no_grad()
    def init_codebooks(self, sem_x: torch.Tensor, cf_x: torch.Tensor, generator=None) -> None:
        self.sem.init_codebooks(self.standardise_sem(sem_x), generator=generator)
        self.cf.init_codebooks(self.standardise_cf(cf_x), generator=generator)

    def forward(
        self, sem_x: torch.Tensor, cf_x: torch.Tensor, align_mask: torch.Tensor | None = None
    ) -> DualTokenizerLoss:
        """sem_x: (B, D_sem), cf_x: (B, D_cf) raw embeddings of the same B items.

        align_mask: optional (B,) bool, the rows that take part in L_CCA (the others are
        only reconstructed); used to hold items out of the alignment for evaluation.
        """
        sem_out = self.sem(self.standardise_sem(sem_x))
        cf_out = self.cf(self.standardise_cf(cf_x))
        total = sem_out.loss + cf_out.loss
        align = torch.zeros((), device=sem_x.device)
        weight = self.config.alignment.weight
        rows = slice(None) if align_mask is None else align_mask
        if weight > 0 and sem_out.x_hat[rows].shape[0] > 1:
            align, _, _ = self.align(sem_out.x_hat[rows], cf_out.x_hat[rows])
            total = total + weight * align
        return DualTokenizerLoss(
            total,
            sem_out.recon_loss,
            sem_out.quant_loss,
            cf_out.recon_loss,
            cf_out.quant_loss,
            align,
        )

    @torch.no_grad()
    def encode_sem(self, sem_x: torch.Tensor) -> torch.Tensor:
        """(B, D_sem) raw text embeddings -> (B, L_max) semantic codes."""
        return self.sem.encode(self.standardise_sem(sem_x))

    @torch.no_grad()
    def encode_cf(self, cf_x: torch.Tensor) -> torch.Tensor:
        """(B, D_cf) raw CF embeddings -> (B, L_max) collaborative codes."""
        return self.cf.encode(self.standardise_cf(cf_x))

    @torch.no_grad()
    def project_sem_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L_max) semantic codes -> (B, P) points in the aligned space (via the decoder)."""
        return self.align.project_sem(self.sem.decode(codes))

    @torch.no_grad()
    def project_cf_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L_max) collaborative codes -> (B, P) points in the aligned space."""
        return self.align.project_cf(self.cf.decode(codes))
