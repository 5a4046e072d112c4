"""Dedup placement: which (code sequence, dedup id) a new item gets, the part both stores
share (the Redis store runs the same walk inside add_items.lua).

A new item's own code prefix may already hold dedup_size items. Then the item goes to the
first code sequence of its placement order (`models.placement.placement_order`: the nearest
codes first, the last position turning fastest) that still has a free dedup id, and its
record says which step that was. The walk is bounded by `models.placement.placement_steps`:
a 507 means that every one of those code sequences is full, not just the item's own.

Dedup ids of a code sequence continue after the bundle's: its `base`. For the item's own
prefix the record brings it (computed from the bundle's prefix index); for any other
sequence the store looks it up in a table of the bundle's bases, loaded once per bundle
version (`bundle_bases`). Counters never go down (ids are never reused), so a sequence
found full stays full: a walk may resume where an earlier item with the same order
stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from models.placement import placement_prefix, placement_steps
from service.catalog.item_cache import entry_tokens
from service.catalog.records import ItemRecord
from service.catalog.store import BundleItems, dedup_exhausted


def prefix_key(prefix: tuple[int, ...] | list[int]) -> str:
    """The text key of a code prefix in the stores (as `ItemRecord.prefix_key`)."""
    return ",".join(str(t) for t in prefix)


# Rows per chunk where the bases are computed: every numpy call below holds the GIL for
# its whole length, and this runs on a thread beside a serving event loop (a bundle swap),
# so no single call may take long (at 1M items one whole-array call took seconds).
_CHUNK = 1 << 16


def bundle_bases(bundle_items: BundleItems) -> Iterator[tuple[str, int]]:
    """(prefix key, base) for every code prefix the bundle's items use: base is the first
    dedup id after the largest one of theirs (what `models.dedup_base.bundle_next_dedup`
    computes from the prefix index). bundle_items yields (id, entry) in the item cache's
    format (item_cache.py).

    Dedup ids are relative to the dedup block, which the compact JSON does not name: its
    first token is the smallest last token of the bundle, since every group of items that
    share a prefix numbers them from 0 (`models.tokens.assign_dedup`).

    Prefixes are grouped by one int64 key per row (tokens in base V = the largest token
    + 1), whose sort releases the GIL, not by a row-wise unique, whose sort does not.
    """
    chunks, rows = [], []
    for _item_id, value in bundle_items():
        rows.append(entry_tokens(value))
        if len(rows) == _CHUNK:
            chunks.append(np.asarray(rows, dtype=np.int64))
            rows = []
    if rows:
        chunks.append(np.asarray(rows, dtype=np.int64))
    if not chunks:
        return
    tokens = np.concatenate(chunks)  # (N, L + 1)
    prefixes, last = tokens[:, :-1], tokens[:, -1]
    unique, group = _unique_rows(prefixes, radix=int(tokens.max()) + 1)
    top = np.full(len(unique), -1, dtype=np.int64)
    np.maximum.at(top, group.reshape(-1), last)
    bases = top - int(last.min()) + 1
    for start in range(0, len(unique), _CHUNK):  # tolist() in chunks, for the GIL
        chunk = zip(
            unique[start : start + _CHUNK].tolist(),
            bases[start : start + _CHUNK].tolist(),
            strict=True,
        )
        for prefix, base in chunk:
            yield prefix_key(prefix), base


def _unique_rows(rows: np.ndarray, radix: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(rows, axis=0, return_inverse=True) for (N, L) tokens in [0, radix), by
    one int64 key per row when the keys fit (a 1-D sort, which releases the GIL)."""
    if radix ** rows.shape[1] >= 2**62:
        return np.unique(rows, axis=0, return_inverse=True)
    key = np.zeros(len(rows), dtype=np.int64)
    for column in rows.T:
        key = key * radix + column
    keys, group = np.unique(key, return_inverse=True)
    unique = np.empty((len(keys), rows.shape[1]), dtype=np.int64)
    for column in range(rows.shape[1] - 1, -1, -1):  # decode the keys, last token first
        keys, unique[:, column] = np.divmod(keys, radix)
    return unique, group


def own_codes_only(rec: ItemRecord) -> tuple[tuple[int, ...], ...]:
    """The order of a record sent without one: its own prefix, one step (W = 1)."""
    return tuple((t,) for t in rec.prefix)


class Placer:
    """Places one batch's new items, inside the store's transaction.

    read_used(key): dedup ids taken after the base of a code sequence, as stored; read
    once per sequence, then counted here (`used` is what to write back). read_base(key):
    the bundle's base of a sequence (0 where the bundle has none).
    """

    def __init__(
        self,
        dedup_size: int,
        read_used: Callable[[str], int],
        read_base: Callable[[str], int],
    ) -> None:
        self.dedup_size = dedup_size
        self._read_used = read_used
        self._read_base = read_base
        self.used: dict[str, int] = {}
        self._bases: dict[str, int] = {}
        # order -> step an earlier item with it took; every step before it was full then,
        # and is still (counters only grow).
        self._resume: dict[tuple[tuple[int, ...], ...], int] = {}

    def _base(self, key: str) -> int:
        if key not in self._bases:
            self._bases[key] = self._read_base(key)
        return self._bases[key]

    def _free_id(self, key: str, base: int) -> bool:
        if key not in self.used:
            self.used[key] = self._read_used(key)
        return base + self.used[key] < self.dedup_size

    def place(self, rec: ItemRecord) -> ItemRecord:
        """rec with the code sequence, base, dedup id and step it gets (its order left
        out); DedupExhausted when none of its `placement_steps` sequences has a free id."""
        order = rec.order or own_codes_only(rec)
        for step in range(self._resume.get(order, 0), placement_steps(order)):
            prefix = placement_prefix(order, step)
            key = prefix_key(prefix)
            base = rec.base if step == 0 else self._base(key)
            if self._free_id(key, base):
                self.used[key] += 1
                self._resume[order] = step
                return replace(
                    rec,
                    prefix=prefix,
                    base=base,
                    dedup=base + self.used[key] - 1,
                    placement=step,
                    order=(),
                )
        raise dedup_exhausted(rec.prefix_key, self.dedup_size, placement_steps(order))
