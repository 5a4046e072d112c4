"""The served catalogue as the decoder reads it, growing as items are added.

Rows: 0 = padding, 1..N the bundle's items, N + 1.. items added at serving time (ids
continue after the last row). Each row has an item vector (the dense head's table and the
history's input) and its L + 1 served tokens; the bundle's tokens are indexed by the base
prefix index, added ones by an overlay (`models.overlay_index.OverlayIndex`) that the
decoder searches together with the base. Replacing an added item gives it a new row and
retires the old one (not live: never returned, still readable in a history).

Withdrawing a row (an item retired through the service's DELETE /items) also makes it not
live, but keeps it in the index: unlike a row superseded by a replace, it can be
reinstated. A row is live when it is neither superseded nor withdrawn.

Merging the overlay: searching two tries costs the decoder at every step (the base's
children are searched for the overlay's tokens; at 1M items 1,000 added items more than
doubled the depth-1 step), so the overlay is folded into the base in the background, in
three parts: `merge_job` (on the serving thread, cheap: a snapshot of the added rows),
`MergeJob.__call__` (ANY thread, the expensive part: build the merged index and its
device tables from the snapshot; touches nothing the table holds) and `install_merge`
(on the serving thread, cheap: swap the merged base in; items added since the snapshot
stay in a fresh overlay). No request waits for the build, and the merged index holds
exactly the same items, so results are the same before and after (tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.decoding import Catalogue
from models.dense_index import DenseIndex
from models.device_index import DeviceIndex, narrow_int
from models.overlay_index import OverlayIndex, merge_rows
from models.prefix_index import PrefixIndex

# Spare rows the tables grow by at the least (`ItemTable._append_rows`).
MIN_SPARE_ROWS = 1024


@dataclass(frozen=True)
class MergedIndex:
    """What a `MergeJob` built: the merged base, its device tables and sorted item ids,
    the number of added rows it folded in and the overlay generation it started from."""

    index: PrefixIndex
    tensors: DeviceIndex
    ids: np.ndarray
    n_merged: int
    generation: int


@dataclass(frozen=True)
class MergeJob:
    """A snapshot of (base, added rows); calling it builds the merged index (any thread)."""

    base: PrefixIndex
    base_ids: np.ndarray
    rows: np.ndarray
    ids: np.ndarray
    generation: int
    device: torch.device

    def __call__(self) -> MergedIndex:
        index = merge_rows(self.base, self.rows, self.ids)
        ids = np.sort(np.concatenate([self.base_ids, self.ids]))
        return MergedIndex(
            index, index.to_tensors(self.device), ids, len(self.ids), self.generation
        )


class ItemTable:
    def __init__(
        self,
        vectors: np.ndarray | torch.Tensor,
        tokens: np.ndarray,
        base_index: PrefixIndex,
        device: torch.device | str = "cpu",
        base_id_free: np.ndarray | None = None,
        dense_index: DenseIndex | None = None,
    ) -> None:
        """vectors: (N + 1, C) float; tokens: (N + 1, L + 1) ints (row 0 zeros);
        base_index: the prefix index over rows 1..N's tokens; base_id_free: optional
        (N + 1,) bool, the bundle's items without an id embedding (no training
        interactions). Items added later never have one. dense_index: optional approximate
        index over rows 1..N's vectors for the dense candidates (`models.dense_index`); it
        never changes: added rows are scanned exactly beside it."""
        self.device = torch.device(device)
        # Buffers with spare rows: an add writes into them instead of copying the whole
        # table (at 1M items a copy of the vectors alone is 256 MB per POST /items).
        # `vectors` and `tokens` are views of the first n_rows.
        self._vector_buf = torch.as_tensor(vectors, dtype=torch.float32).to(self.device)
        # Tokens in the narrowest type that holds the vocabulary (int16 for every shipped
        # shape): 8 bytes per item instead of 32; readers widen the rows they gather.
        tokens = narrow_int(np.asarray(tokens, dtype=np.int64), base_index.vocab_size)
        self._token_buf = torch.as_tensor(tokens, device=self.device)
        self.vectors, self.tokens = self._vector_buf, self._token_buf
        if self.vectors.shape[0] != self.tokens.shape[0]:
            raise ValueError(
                f"{self.vectors.shape[0]} item vectors for {self.tokens.shape[0]} token rows"
            )
        self.n_base = int(self.tokens.shape[0]) - 1
        if dense_index is not None and dense_index.n_rows != self.n_base + 1:
            raise ValueError(
                f"the dense index covers {dense_index.n_rows - 1} rows, the table has "
                f"{self.n_base} bundle items"
            )
        self.dense_index = dense_index
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
        # The bundle's own index, kept to rebuild from when a replace supersedes a row that
        # a merge folded into the base (an index cannot drop an item in place).
        self._bundle = (base_index, self.overlay.base_ids, self._base_tensors)
        self._merged_rows = np.zeros(0, dtype=np.int64)  # added rows in the base, sorted
        self._generation = 0  # bumped whenever the overlay is rebuilt, not just grown

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
        base_tensors, merged_rows = self._base_tensors, self._merged_rows
        if len(retire):  # rebuild the overlay from the added rows not superseded
            # (withdrawn rows stay indexed: they may be reinstated)
            if np.isin(retire, merged_rows).any():  # back to the bundle's own base
                base, base_ids, base_tensors = self._bundle
                merged_rows = np.zeros(0, dtype=np.int64)
            else:
                base, base_ids = self.overlay.base, self.overlay.base_ids
            overlay = OverlayIndex(base, base_ids)
            current = ~superseded[self.n_base + 1 :]
            keep = np.flatnonzero(current.cpu().numpy()) + self.n_base + 1
            keep = keep[~np.isin(keep, merged_rows)]
            overlay.add(
                np.concatenate([self.tokens[keep].cpu().numpy(), tokens]),
                np.concatenate([keep, rows]),
            )
        else:
            overlay = self.overlay
            overlay.add(tokens, rows)  # validates before it changes anything
        # Only after everything that can fail: grow the tables.
        if overlay is not self.overlay:
            self._generation += 1
            self._base_tensors, self._merged_rows = base_tensors, merged_rows
        self.overlay = overlay
        self._append_rows(vectors, torch.as_tensor(tokens, device=self.device))
        fresh = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        self._superseded = torch.cat([superseded, fresh])
        self._withdrawn = torch.cat([self._withdrawn, fresh])
        self.live = self._live_mask()
        self._overlay_tensors = overlay.overlay.to_tensors(self.device)
        return rows

    def _append_rows(self, vectors: torch.Tensor, tokens: torch.Tensor) -> None:
        """Write M new rows after the current ones, growing the buffers by an eighth (at
        least MIN_SPARE_ROWS) when full: amortised O(M) per add for 12.5% spare memory.
        Earlier views stay valid: rows are only ever appended, never rewritten."""
        n, m = self.n_rows, vectors.shape[0]
        if n + m > self._vector_buf.shape[0]:
            capacity = n + max(m, n // 8, MIN_SPARE_ROWS)
            grown_v = self._vector_buf.new_zeros(capacity, self._vector_buf.shape[1])
            grown_t = self._token_buf.new_zeros(capacity, self._token_buf.shape[1])
            grown_v[:n], grown_t[:n] = self.vectors, self.tokens
            self._vector_buf, self._token_buf = grown_v, grown_t
        self._vector_buf[n : n + m] = vectors
        self._token_buf[n : n + m] = tokens
        self.vectors, self.tokens = self._vector_buf[: n + m], self._token_buf[: n + m]

    def merge_job(self) -> MergeJob | None:
        """A snapshot of the base and the overlay's rows to merge (None: nothing to merge).
        Serving thread; cheap (no copy: `OverlayIndex.add` replaces its arrays)."""
        rows, ids = self.overlay.added()
        if not len(ids):
            return None
        return MergeJob(
            self.overlay.base, self.overlay.base_ids, rows, ids, self._generation, self.device
        )

    def install_merge(self, merged: MergedIndex) -> bool:
        """Swap a merge's base in (serving thread): rows added after its snapshot go into
        a new overlay over it. False, and nothing changes, when the overlay was rebuilt
        since the snapshot (a replace): the merge is stale and the caller merges again."""
        if merged.generation != self._generation:
            return False
        rows, ids = self.overlay.added()
        overlay = OverlayIndex(merged.index, merged.ids)
        overlay.add(rows[merged.n_merged :], ids[merged.n_merged :])
        self._merged_rows = np.sort(np.concatenate([self._merged_rows, ids[: merged.n_merged]]))
        self.overlay = overlay
        self._base_tensors = merged.tensors
        self._overlay_tensors = overlay.overlay.to_tensors(self.device)
        return True

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
            dense_index=self.dense_index,
        )
