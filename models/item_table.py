"""Per-item code tokens and router masks: how an item id becomes the generator's input.

Shared by training (stage D) and serving (the engine), so both build a history the same
way. Items are rows: row 0 is padding, rows 1..N the catalog, and `extend` appends items
added at serving time (ids continue after the last row).
"""

from __future__ import annotations

import numpy as np
import torch

from models.generator import HistoryItems
from models.tokens import CF, SEM, TokenLayout, item_tokens


class ItemTable:
    """Code tokens of the first L levels of both codebooks, on one device.

    cf_codes, sem_codes: (N + 1, L_max) codes (row 0 = padding, any value); budget L.
    cf_tokens, sem_tokens: (N + 1, L) int64 tensors via layout.code_token, row 0 = PAD.
    """

    def __init__(
        self,
        cf_codes: np.ndarray,
        sem_codes: np.ndarray,
        budget: int,
        layout: TokenLayout,
        device: torch.device | str = "cpu",
    ) -> None:
        cf_codes = np.asarray(cf_codes, dtype=np.int64)
        sem_codes = np.asarray(sem_codes, dtype=np.int64)
        if cf_codes.shape != sem_codes.shape or cf_codes.ndim != 2:
            raise ValueError(
                f"cf_codes and sem_codes must be (N + 1, L_max) of one shape, got "
                f"{cf_codes.shape} and {sem_codes.shape}"
            )
        if not 1 <= budget <= cf_codes.shape[1]:
            raise ValueError(f"budget must be in [1, {cf_codes.shape[1]}], got {budget}")
        self.budget = budget
        self.layout = layout
        self.device = torch.device(device)
        self.cf_codes = np.zeros((0, cf_codes.shape[1]), dtype=np.int64)
        self.sem_codes = np.zeros_like(self.cf_codes)
        self.cf_tokens = torch.zeros((0, budget), dtype=torch.int64, device=self.device)
        self.sem_tokens = torch.zeros_like(self.cf_tokens)
        self.extend(cf_codes, sem_codes)
        self.cf_codes[0] = self.sem_codes[0] = 0
        self.cf_tokens[0] = self.sem_tokens[0] = 0

    @property
    def n_rows(self) -> int:
        return self.cf_codes.shape[0]

    def extend(self, cf_codes: np.ndarray, sem_codes: np.ndarray) -> np.ndarray:
        """Append (M, L_max) codes of M new items; returns their (M,) int64 row ids."""
        cf_codes = np.asarray(cf_codes, dtype=np.int64).reshape(-1, self.cf_codes.shape[1])
        sem_codes = np.asarray(sem_codes, dtype=np.int64).reshape(cf_codes.shape)
        levels = np.arange(self.budget)[None, :]
        cf_tok = self.layout.code_token(CF, levels, cf_codes[:, : self.budget])
        sem_tok = self.layout.code_token(SEM, levels, sem_codes[:, : self.budget])
        ids = np.arange(self.n_rows, self.n_rows + len(cf_codes), dtype=np.int64)
        self.cf_codes = np.concatenate([self.cf_codes, cf_codes])
        self.sem_codes = np.concatenate([self.sem_codes, sem_codes])
        self.cf_tokens = torch.cat([self.cf_tokens, torch.as_tensor(cf_tok, device=self.device)])
        self.sem_tokens = torch.cat([self.sem_tokens, torch.as_tensor(sem_tok, device=self.device)])
        return ids

    def hard_tokens(self, n_cf: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N + 1,) n_cf -> (N + 1, L + 1) int64 item tokens with dedup (row 0 = zeros)."""
        n_cf = np.asarray(n_cf.cpu() if isinstance(n_cf, torch.Tensor) else n_cf, dtype=np.int64)
        out = np.zeros((self.n_rows, self.budget + 1), dtype=np.int64)
        out[1:] = item_tokens(
            self.cf_codes[1:], self.sem_codes[1:], n_cf[1:], self.budget, self.layout
        )
        return out

    def hard_masks(self, n_cf: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M,) n_cf -> (cf_mask, sem_mask) (M, L) float 0/1 (as Router.hard_masks)."""
        if isinstance(n_cf, torch.Tensor):
            n_cf = n_cf.to(self.device)[:, None]
        else:
            n_cf = torch.as_tensor(np.asarray(n_cf), device=self.device)[:, None]
        k = torch.arange(1, self.budget + 1, device=self.device)
        return (k <= n_cf).float(), (k <= self.budget - n_cf).float()

    def history(
        self,
        items: torch.Tensor,
        cf_mask: torch.Tensor,
        sem_mask: torch.Tensor,
        dedup_tokens: torch.Tensor,
    ) -> HistoryItems:
        """items: (B, T) item ids (0 = padding); cf_mask, sem_mask: (B, T, L) masks of those
        items; dedup_tokens: (N + 1,) each item's dedup token under the current layout.
        Padding positions get zero masks and token 0."""
        valid = (items != 0)[..., None].to(cf_mask.dtype)
        return HistoryItems(
            cf_tokens=self.cf_tokens[items],
            sem_tokens=self.sem_tokens[items],
            cf_mask=cf_mask * valid,
            sem_mask=sem_mask * valid,
            dedup_tokens=dedup_tokens[items],
        )
