"""The index the service decodes over: a base PrefixIndex plus a small overlay of the
items added at serving time.

The overlay is rebuilt from every added item on each `add` (cheap while few are added);
the decoder walks both tries at once (`to_tensors` gives the pair), so a new item can be
recommended the moment it is added. `merged()` rebuilds one PrefixIndex from both, which
is what the service's background merge (service/index_merge.py) swaps in.
"""

from __future__ import annotations

import numpy as np
import torch

from models.device_index import DeviceIndex
from models.prefix_index import PrefixIndex, build_prefix_index, check_items


class OverlayIndex:
    """A base PrefixIndex plus a small overlay index of items added at serving time
    (module docstring)."""

    def __init__(self, base: PrefixIndex, base_ids: np.ndarray | None = None) -> None:
        """base_ids: optional (N,) int64 the base's item ids ascending, when the caller
        has them (`ItemTable`'s merge computes them off the serving thread): reading
        them from a 1M-item base walks the whole trie."""
        if not isinstance(base, PrefixIndex):
            raise ValueError(f"base must be a PrefixIndex, got {type(base).__name__}")
        self.base = base
        # For the "item id already used" check.
        self._base_ids = np.sort(base.items()[1]) if base_ids is None else base_ids
        self._rows = np.zeros((0, base.depth), dtype=np.int64)
        self._ids = np.zeros(0, dtype=np.int64)
        self.overlay = build_prefix_index(self._rows, self._ids, base.vocab_size)
        self._base_tensors: dict[str, DeviceIndex] = {}  # the base never changes: build once

    @property
    def n_added(self) -> int:
        return int(self._ids.shape[0])

    def add(self, item_tokens: object, item_ids: object) -> None:
        """Add (M, depth) rows with (M,) new item ids. ValueError if a row already exists
        (in base or overlay, or twice in the input) or an id is already used."""
        rows, ids = check_items(item_tokens, item_ids, self.base.vocab_size, self.base.depth)
        in_base = self.base.lookup(rows) >= 0
        in_overlay = self.overlay.lookup(rows) >= 0
        if (in_base | in_overlay).any():
            i = int(np.flatnonzero(in_base | in_overlay)[0])
            where = "base" if in_base[i] else "overlay"
            raise ValueError(
                f"item {ids[i]}: its tokens {rows[i].tolist()} already belong to an item in "
                f"the {where} index (give it a fresh dedup token)"
            )
        used = np.isin(ids, self._base_ids) | np.isin(ids, self._ids)
        if used.any():
            raise ValueError(f"item id {ids[used][0]} is already in the index")
        all_rows = np.concatenate([self._rows, rows])
        all_ids = np.concatenate([self._ids, ids])
        # Build first, assign after: a failing build (duplicates within the input) leaves
        # the overlay unchanged.
        overlay = build_prefix_index(all_rows, all_ids, self.base.vocab_size)
        self._rows, self._ids, self.overlay = all_rows, all_ids, overlay

    def lookup(self, item_tokens: object) -> np.ndarray:
        """(M, depth) rows -> (M,) item ids from base or overlay, -1 where neither has it."""
        base = self.base.lookup(item_tokens)
        return np.where(base >= 0, base, self.overlay.lookup(item_tokens))

    @property
    def base_ids(self) -> np.ndarray:
        """(N,) int64 the base's item ids, ascending (do not modify)."""
        return self._base_ids

    def added(self) -> tuple[np.ndarray, np.ndarray]:
        """((M, depth) rows, (M,) ids) of the overlay's items, in the order they were added.
        The arrays are replaced, never edited, by `add`: a snapshot stays valid."""
        return self._rows, self._ids

    def merged(self) -> PrefixIndex:
        """One PrefixIndex over base and overlay items (the same as building from scratch)."""
        return merge_rows(self.base, self._rows, self._ids)

    def to_tensors(self, device: torch.device | str = "cpu") -> tuple[DeviceIndex, DeviceIndex]:
        """(base, overlay) DeviceIndex pair, the `index_tensors` argument of the decoder."""
        key = str(torch.device(device))
        if key not in self._base_tensors:
            self._base_tensors[key] = self.base.to_tensors(device)
        return self._base_tensors[key], self.overlay.to_tensors(device)


def merge_rows(base: PrefixIndex, rows: np.ndarray, ids: np.ndarray) -> PrefixIndex:
    """The PrefixIndex of base's items plus (M, depth) `rows` with (M,) `ids` (built from
    scratch: the same index whatever was added when)."""
    base_rows, base_ids = base.items()
    return build_prefix_index(
        np.concatenate([base_rows, rows]), np.concatenate([base_ids, ids]), base.vocab_size
    )
