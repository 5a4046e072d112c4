"""The served catalogue as the decoder reads it, growing as items are added.

Rows: 0 = padding, 1..N the bundle's items, N + 1.. items added at serving time (ids
continue after the last row). Each row has an item vector (the dense head's table and the
history's input) and its L + 1 served tokens; the bundle's tokens are indexed by the base
prefix index, added ones by an overlay (`models.prefix_index.OverlayIndex`) that the
decoder searches together with the base. Replacing an added item gives it a new row and
retires the old one (not live: never returned, still readable in a history).
"""

from __future__ import annotations

import numpy as np
import torch

from models.decoding import Catalogue
from models.prefix_index import DeviceIndex, OverlayIndex, PrefixIndex


class ItemTable:
    def __init__(
        self,
        vectors: np.ndarray | torch.Tensor,
        tokens: np.ndarray,
        base_index: PrefixIndex,
        device: torch.device | str = "cpu",
    ) -> None:
        """vectors: (N + 1, C) float; tokens: (N + 1, L + 1) int64 (row 0 zeros);
        base_index: the prefix index over rows 1..N's tokens."""
        self.device = torch.device(device)
        self.vectors = torch.as_tensor(vectors, dtype=torch.float32).to(self.device)
        self.tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.device)
        if self.vectors.shape[0] != self.tokens.shape[0]:
            raise ValueError(
                f"{self.vectors.shape[0]} item vectors for {self.tokens.shape[0]} token rows"
            )
        self.n_base = int(self.tokens.shape[0]) - 1
        self.live = torch.ones(self.tokens.shape[0], dtype=torch.bool, device=self.device)
        self.live[0] = False
        self.overlay = OverlayIndex(base_index)
        self._base_tensors: DeviceIndex = base_index.to_tensors(self.device)
        self._overlay_tensors: DeviceIndex = self.overlay.overlay.to_tensors(self.device)

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])

    def add(
        self, vectors: np.ndarray, tokens: np.ndarray, retire: np.ndarray | None = None
    ) -> np.ndarray:
        """Append M rows ((M, C) vectors, (M, L + 1) tokens); `retire`: rows (of earlier
        added items) they replace. Returns the new rows. Nothing changes when the tokens
        clash with a live row (ValueError)."""
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=self.device)
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] != self.tokens.shape[1]:
            raise ValueError(f"tokens must be (M, {self.tokens.shape[1]}), got {tokens.shape}")
        if tuple(vectors.shape) != (len(tokens), self.vectors.shape[1]):
            raise ValueError(
                f"vectors must be ({len(tokens)}, {self.vectors.shape[1]}), one per token row, "
                f"got {tuple(vectors.shape)}"
            )
        rows = np.arange(self.n_rows, self.n_rows + len(tokens), dtype=np.int64)
        retire = np.zeros(0, np.int64) if retire is None else np.asarray(retire, np.int64)
        live = self.live.clone()
        live[torch.as_tensor(retire, device=self.device)] = False
        if len(retire):  # rebuild the overlay from the added rows that stay live
            overlay = OverlayIndex(self.overlay.base)
            keep = np.flatnonzero(live[self.n_base + 1 :].cpu().numpy()) + self.n_base + 1
            overlay.add(
                np.concatenate([self.tokens[keep].cpu().numpy(), tokens]),
                np.concatenate([keep, rows]),
            )
        else:
            overlay = self.overlay
            overlay.add(tokens, rows)  # validates before it changes anything
        # Only after everything that can fail: grow the tables.
        self.overlay = overlay
        self.vectors = torch.cat([self.vectors, vectors])
        self.tokens = torch.cat([self.tokens, torch.as_tensor(tokens, device=self.device)])
        self.live = torch.cat([live, torch.ones(len(rows), dtype=torch.bool, device=self.device)])
        self._overlay_tensors = overlay.overlay.to_tensors(self.device)
        return rows

    def catalogue(self) -> Catalogue:
        """What `models.decoding` reads (a consistent snapshot of the current state)."""
        return Catalogue(
            item_vectors=self.vectors,
            item_tokens=self.tokens,
            index=(self._base_tensors, self._overlay_tensors),
            live=self.live,
        )
