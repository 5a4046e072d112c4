"""The served catalogue as the decoder reads it, growing as items are added.

Rows: 0 = padding, 1..N the bundle's items, N + 1.. items added at serving time (ids
continue after the last row). Each row has an item vector (the dense head's table and the
history's input) and its L + 1 served tokens; the bundle's tokens are indexed by the base
prefix index, added ones by an overlay (`models.prefix_index.OverlayIndex`) that the
decoder searches together with the base. Replacing an added item gives it a new row and
retires the old one (not live: never returned, still readable in a history).

Withdrawing a row (an item retired through the service's DELETE /items) also makes it not
live, but keeps it in the index: unlike a row superseded by a replace, it can be
reinstated. A row is live when it is neither superseded nor withdrawn.
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
        base_id_free: np.ndarray | None = None,
    ) -> None:
        """vectors: (N + 1, C) float; tokens: (N + 1, L + 1) int64 (row 0 zeros);
        base_index: the prefix index over rows 1..N's tokens; base_id_free: optional
        (N + 1,) bool, the bundle's items without an id embedding (no training
        interactions). Items added later never have one."""
        self.device = torch.device(device)
        self.vectors = torch.as_tensor(vectors, dtype=torch.float32).to(self.device)
        self.tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.device)
        if self.vectors.shape[0] != self.tokens.shape[0]:
            raise ValueError(
                f"{self.vectors.shape[0]} item vectors for {self.tokens.shape[0]} token rows"
            )
        self.n_base = int(self.tokens.shape[0]) - 1
        if base_id_free is None:
            base_id_free = np.zeros(self.n_base + 1, dtype=bool)
        if np.shape(base_id_free) != (self.n_base + 1,):
            raise ValueError(
                f"base_id_free must be ({self.n_base + 1},), got {np.shape(base_id_free)}"
            )
        self._id_free = torch.as_tensor(np.asarray(base_id_free, dtype=bool), device=self.device)
        # Two reasons a row is not returned; kept apart because only one of them is undone.
        self._superseded = torch.zeros(self.n_rows, dtype=torch.bool, device=self.device)
        self._withdrawn = torch.zeros(self.n_rows, dtype=torch.bool, device=self.device)
        self.live = self._live_mask()
        self.overlay = OverlayIndex(base_index)
        self._base_tensors: DeviceIndex = base_index.to_tensors(self.device)
        self._overlay_tensors: DeviceIndex = self.overlay.overlay.to_tensors(self.device)

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])

    def _live_mask(self) -> torch.Tensor:
        live = ~(self._superseded | self._withdrawn)
        live[0] = False  # padding
        return live

    def set_withdrawn(self, rows: np.ndarray, withdrawn: bool) -> None:
        """Withdraw rows (never returned, still readable in a history) or reinstate them
        (live again unless a replace superseded them). A new mask, not an in-place edit,
        so a catalogue() snapshot taken before keeps what it saw."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if rows.min() < 1 or rows.max() >= self.n_rows:
            raise ValueError(f"rows must lie in [1, {self.n_rows - 1}], got {rows.tolist()}")
        mask = self._withdrawn.clone()
        mask[torch.as_tensor(rows, device=self.device)] = withdrawn
        self._withdrawn = mask
        self.live = self._live_mask()

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
        superseded = self._superseded.clone()
        superseded[torch.as_tensor(retire, device=self.device)] = True
        if len(retire):  # rebuild the overlay from the added rows not superseded
            # (withdrawn rows stay indexed: they may be reinstated)
            overlay = OverlayIndex(self.overlay.base)
            current = ~superseded[self.n_base + 1 :]
            keep = np.flatnonzero(current.cpu().numpy()) + self.n_base + 1
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
        fresh = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        self._superseded = torch.cat([superseded, fresh])
        self._withdrawn = torch.cat([self._withdrawn, fresh])
        self.live = self._live_mask()
        self._overlay_tensors = overlay.overlay.to_tensors(self.device)
        return rows

    def id_free(self) -> torch.Tensor:
        """(R,) bool rows without an id embedding: the bundle's id-free items and every
        added one (what `DecodingConfig.new_item_share` applies to)."""
        if len(self._id_free) < self.n_rows:  # rows were added since the last call
            added = torch.ones(
                self.n_rows - len(self._id_free), dtype=torch.bool, device=self.device
            )
            self._id_free = torch.cat([self._id_free, added])
        return self._id_free

    def catalogue(self) -> Catalogue:
        """What `models.decoding` reads (a consistent snapshot of the current state)."""
        return Catalogue(
            item_vectors=self.vectors,
            item_tokens=self.tokens,
            index=(self._base_tensors, self._overlay_tensors),
            live=self.live,
            id_free=self.id_free(),
        )
