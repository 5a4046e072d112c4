"""Item attributes that business-rule filters read, kept per row of the served catalogue,
and the allowed-row mask a filter makes of them (`models.decoding`, `allowed`).

Attributes:
  - categories: a set of names per item. Bundle items carry their dataset's categories
    (MovieLens genres, Amazon categories, RecBole `class`/`genre`/`category` fields,
    synthetic topics), added items the ones POST /items gave them. Names match without
    regard to case (`str.casefold`), so "comedy" finds "Comedy".
  - added_at: unix seconds. Added items: when they were added. Bundle items have no time
    of their own; they count as added when the bundle was created (its manifest's
    `created_at`): they are in the catalogue since that version exists.

Masks are vector ops over arrays, never a Python loop over the catalogue: the bundle's
categories are an inverted index (category -> its rows, CSR), so a category filter costs
the rows it matches; added items' (few) are a flat (row, category) list matched with
np.isin; times are one (R,) float array.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def split_categories(value: object) -> tuple[str, ...]:
    """An item's categories: a list as given, a text split at commas (the readers join
    several with ", ", e.g. "Action, Comedy"); stripped, empty ones dropped, repeats
    (ignoring case) dropped, first spelling kept. None or anything else: ()."""
    if isinstance(value, str):
        parts: Iterable[object] = value.split(",")
    elif isinstance(value, list | tuple | np.ndarray):
        parts = value
    else:
        return ()
    seen: dict[str, str] = {}
    for part in parts:
        name = str(part).strip()
        if name and name.casefold() not in seen:
            seen[name.casefold()] = name
    return tuple(seen.values())


def encode_categories(per_row: Sequence[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row categories (each a list or a comma-separated text, `split_categories`) ->
    (names (K,) str sorted, ptr (R + 1,) int64, ids (nnz,) int64): row r's categories are
    names[ids[ptr[r]:ptr[r + 1]]]. Names are case-folded duplicates merged (first
    spelling wins). What a bundle stores (`models.bundle`, items.npz)."""
    split = [split_categories(v) for v in per_row]
    spelling: dict[str, str] = {}
    for cats in split:
        for name in cats:
            spelling.setdefault(name.casefold(), name)
    keys = sorted(spelling)
    number = {key: i for i, key in enumerate(keys)}
    counts = np.fromiter((len(c) for c in split), dtype=np.int64, count=len(split))
    ptr = np.zeros(len(split) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    ids = np.fromiter(
        (number[name.casefold()] for cats in split for name in cats),
        dtype=np.int64,
        count=int(ptr[-1]),
    )
    names = np.array([spelling[k] for k in keys], dtype=str) if keys else np.zeros(0, str)
    return names, ptr, ids


@dataclass(frozen=True)
class RowFilter:
    """One request's business rules, resolved to rows (all optional; all must hold).

    include_rows: (P,) int64 the allowlist's rows (None: no allowlist; empty: nothing).
    exclude_rows: (E,) int64 the denylist's rows.
    categories: the item must have any of these (None: no category rule).
    added_after, added_before: unix seconds, the half-open window [after, before) the
        item's added_at must lie in (None: open on that side).
    """

    include_rows: np.ndarray | None = None
    exclude_rows: np.ndarray | None = None
    categories: tuple[str, ...] | None = None
    added_after: float | None = None
    added_before: float | None = None


class ItemAttributes:
    """Categories and added times of every row (0 padding, 1..N bundle, N + 1.. added)."""

    def __init__(
        self,
        names: np.ndarray,
        ptr: np.ndarray,
        ids: np.ndarray,
        bundle_added_at: float,
    ) -> None:
        """names, ptr, ids: the bundle's categories as `encode_categories` gives them,
        ptr (N + 2,) over rows 0..N (row 0 has none); bundle_added_at: the time every
        bundle row counts as added (the bundle's creation, unix seconds)."""
        ptr = np.asarray(ptr, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        self.n_rows = len(ptr) - 1
        if self.n_rows < 1 or ptr[0] != 0 or ptr[-1] != len(ids):
            raise ValueError("category ptr must be (R + 1,) from 0 to len(ids)")
        spellings = [str(n) for n in np.asarray(names).tolist()]
        self._key_id = {n.casefold(): i for i, n in enumerate(spellings)}
        # Category id -> the name as first spelt (bundle names, then added items' new ones):
        # what an item's view shows.
        self._spelling = spellings
        # The bundle's CSR itself, kept for one row's categories (an item's view): the
        # inverted index below answers "which rows", this one "which categories".
        self._ptr, self._ids = ptr, ids
        # Inverted index of the bundle rows: category c's rows are rows[cptr[c]:cptr[c+1]].
        owner = np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(ptr))
        order = np.argsort(ids, kind="stable")
        self._base_rows = owner[order]
        self._base_ptr = np.zeros(len(self._key_id) + 1, dtype=np.int64)
        np.cumsum(np.bincount(ids, minlength=len(self._key_id)), out=self._base_ptr[1:])
        # Added rows' categories: flat (row, category id) pairs; few, matched by np.isin.
        # One tuple, replaced whole by add(): a reader on another thread (an item's view
        # is read on the event loop, adds run on the inference thread) never sees rows
        # and categories of different lengths.
        self._added: tuple[np.ndarray, np.ndarray] = (
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
        )
        self.added_at = np.full(self.n_rows, float(bundle_added_at), dtype=np.float64)
        self.added_at[0] = np.nan  # padding: never in any time window

    def add(self, rows: np.ndarray, categories: Sequence[Sequence[str]], added_at) -> None:
        """The attributes of rows appended to the catalogue (consecutive, after the last)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(categories) or len(rows) != len(np.atleast_1d(added_at)):
            raise ValueError("one categories entry and one added_at per row")
        if len(rows) and (rows[0] != self.n_rows or np.any(np.diff(rows) != 1)):
            raise ValueError(f"rows must continue the catalogue from row {self.n_rows}")
        pairs_rows, pairs_cats = [], []
        for row, cats in zip(rows.tolist(), categories, strict=True):
            for name in split_categories(cats):
                pairs_rows.append(row)
                key = name.casefold()
                if key not in self._key_id:
                    self._key_id[key] = len(self._spelling)
                    self._spelling.append(name)
                pairs_cats.append(self._key_id[key])
        added_rows, added_cats = self._added
        self._added = (
            np.concatenate([added_rows, np.asarray(pairs_rows, np.int64)]),
            np.concatenate([added_cats, np.asarray(pairs_cats, np.int64)]),
        )
        self.added_at = np.concatenate([self.added_at, np.asarray(added_at, np.float64)])
        self.n_rows += len(rows)

    def category_rows(self, names: Sequence[str]) -> np.ndarray:
        """(M,) int64 rows having any of these categories (unknown names match nothing)."""
        wanted = {self._key_id.get(str(n).strip().casefold(), -1) for n in names} - {-1}
        if not wanted:
            return np.zeros(0, dtype=np.int64)
        cats = np.fromiter(wanted, dtype=np.int64)
        base = cats[cats < len(self._base_ptr) - 1]
        parts = [self._base_rows[self._base_ptr[c] : self._base_ptr[c + 1]] for c in base]
        added_rows, added_cats = self._added
        parts.append(added_rows[np.isin(added_cats, cats)])
        return np.concatenate(parts)

    def categories_of(self, row: int) -> list[str]:
        """One row's categories, in the item's own order, each name as the catalogue first
        spelt it (names match without regard to case); [] for an unknown row. For an
        item's view: a CSR slice for a bundle row, a scan of the (few) added pairs."""
        if 0 < row < len(self._ptr) - 1:
            cats = self._ids[self._ptr[row] : self._ptr[row + 1]]
        else:
            added_rows, added_cats = self._added
            cats = added_cats[added_rows == row]
        spelling = self._spelling  # only ever appended to
        return [spelling[int(c)] for c in cats]

    def allowed(self, rule: RowFilter) -> np.ndarray:
        """(R,) bool, the rows the rule allows (liveness, retirements and the history's
        exclusions are the decoder's business, not checked here)."""
        if rule.include_rows is not None:
            mask = np.zeros(self.n_rows, dtype=bool)
            mask[self.allowed_list(rule)] = True
            return mask
        mask = np.ones(self.n_rows, dtype=bool)
        if rule.exclude_rows is not None and len(rule.exclude_rows):
            rows = np.asarray(rule.exclude_rows, dtype=np.int64)
            mask[rows[(rows > 0) & (rows < self.n_rows)]] = False
        if rule.categories is not None:
            in_any = np.zeros(self.n_rows, dtype=bool)
            in_any[self.category_rows(rule.categories)] = True
            mask &= in_any
        with np.errstate(invalid="ignore"):  # NaN (padding) compares False: never allowed
            if rule.added_after is not None:
                mask &= self.added_at >= rule.added_after
            if rule.added_before is not None:
                mask &= self.added_at < rule.added_before
        mask[0] = False
        return mask

    def allowed_list(self, rule: RowFilter) -> np.ndarray:
        """(P,) int64 ascending, the rows an allowlist rule allows: its own rows that pass
        the rule's other criteria, each tested on those rows only, so a short allowlist
        never costs a catalogue-sized mask. ValueError for a rule without an allowlist."""
        if rule.include_rows is None:
            raise ValueError("allowed_list needs a rule with include_rows")
        rows = np.unique(np.asarray(rule.include_rows, dtype=np.int64))
        rows = rows[(rows > 0) & (rows < self.n_rows)]
        if rule.exclude_rows is not None and len(rule.exclude_rows):
            rows = rows[~np.isin(rows, np.asarray(rule.exclude_rows, dtype=np.int64))]
        if rule.categories is not None:
            rows = rows[np.isin(rows, self.category_rows(rule.categories))]
        added = self.added_at[rows]
        with np.errstate(invalid="ignore"):  # NaN (padding) compares False: never allowed
            if rule.added_after is not None:
                rows, added = rows[added >= rule.added_after], added[added >= rule.added_after]
            if rule.added_before is not None:
                rows = rows[added < rule.added_before]
        return rows
