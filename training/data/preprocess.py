"""Raw interactions -> contiguous ids, chronological sequences, leave-one-out split.

The protocol (METHOD.md, "Evaluation protocol"):
- k-core filter (users and items with >= k interactions, iterated to a fixed point);
- each user's interactions in time order, ties broken by source row order (half of
  MovieLens-100K's rows share a timestamp with another of the same user, so the
  tie-break decides which item is the test target);
- internal item ids 1..N, 0 is padding;
- leave-one-out: last item = test target, second to last = validation target, the rest
  is training;
- optional cold-item holdout: the newest `cold_item_fraction` of items (by first
  interaction) are removed from every history and from training, and stay only as test
  targets, so cold-start can be measured on items no model has seen;
- popularity groups by training count: head = top `head_fraction` of the items that have
  training interactions, tail = the rest of those, cold = no training interaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.config import Config, check_positive_ints, check_range
from training.data.schema import ITEM_TEXT_COLUMNS, RawDataset

logger = logging.getLogger(__name__)

GROUPS = ("head", "tail", "cold")
HEAD, TAIL, COLD = 0, 1, 2


class EmptyDatasetError(ValueError):
    """Filtering left nothing to train or evaluate on."""


def warm_mask(counts: np.ndarray) -> np.ndarray:
    """(N + 1,) bool: the items with training interactions (`train_counts() > 0`); row 0,
    padding, is never warm. An existing warm mask works too (True counts as 1); a new
    array is returned either way, so callers may modify it."""
    warm = np.asarray(counts) > 0
    warm[0] = False
    return warm


@dataclass(frozen=True)
class PreprocessConfig(Config):
    k_core: int = 5  # the paper's and the field's default for Amazon/MovieLens
    cold_item_fraction: float = 0.0  # 0 = no holdout; e.g. 0.05 holds out the newest 5%
    head_fraction: float = 0.2  # head = top 20% of items by training count (METHOD.md)

    def __post_init__(self) -> None:
        check_positive_ints(self, "k_core")
        check_range(self, "cold_item_fraction", 0.0, 1.0, high_open=True)
        check_range(self, "head_fraction", 0.0, 1.0, low_open=True, high_open=True)


@dataclass(frozen=True)
class Sequences:
    """A ragged batch of item sequences in CSR form: user u's items are
    `items[offsets[u]:offsets[u + 1]]`, oldest first."""

    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (nnz,) int64, internal ids >= 1

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def row_ids(self) -> np.ndarray:
        """(nnz,) the user index of every entry."""
        return np.repeat(np.arange(self.n_users), self.lengths)

    def select(self, users: np.ndarray) -> Sequences:
        """The sub-batch of the given users, in that order."""
        lengths = self.lengths[users]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        starts = np.repeat(self.offsets[users] - offsets[:-1], lengths)
        return Sequences(offsets, self.items[np.arange(offsets[-1]) + starts])

    def last(self, max_len: int) -> np.ndarray:
        """(U, max_len) the most recent `max_len` items of each user, left-padded with 0."""
        out = np.zeros((self.n_users, max_len), dtype=np.int64)
        lengths = np.minimum(self.lengths, max_len)
        rows = np.repeat(np.arange(self.n_users), lengths)
        # position within the kept tail, counted from the right edge
        from_end = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = max_len - np.repeat(lengths, lengths) + from_end
        src = np.repeat(self.offsets[1:] - lengths, lengths) + from_end
        out[rows, cols] = self.items[src]
        return out


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate: each has a history (what the model sees) and one target."""

    users: np.ndarray  # (U,) internal user indices
    history: Sequences  # history of each of those users, oldest first
    targets: np.ndarray  # (U,) internal item ids


@dataclass(frozen=True)
class ProcessedDataset:
    """A dataset ready for training and evaluation (see the module docstring)."""

    name: str
    fingerprint: str  # raw fingerprint + preprocessing config: the cache key
    config: PreprocessConfig
    item_ids: np.ndarray  # (N + 1,) external item ids as str, [0] = "" (padding)
    user_ids: np.ndarray  # (U,) external user ids as str
    items: pd.DataFrame  # (N + 1) rows: item_id + ITEM_TEXT_COLUMNS, row i = internal id i
    sequences: Sequences  # every user's full filtered sequence, oldest first
    timestamps: np.ndarray  # (nnz,) int64, aligned with sequences.items
    cold_holdout: np.ndarray  # (N + 1,) bool, items held out of training entirely

    @property
    def n_items(self) -> int:
        """Catalog size, without the padding id."""
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return self.sequences.n_users

    @property
    def n_interactions(self) -> int:
        return len(self.sequences.items)

    # --- the leave-one-out split -------------------------------------------------
    def warm_prefix_mask(self, drop_last: int) -> np.ndarray:
        """(nnz,) bool, aligned with sequences.items (and timestamps): the interactions
        left once each user's last `drop_last` items and every held-out item are removed."""
        seq = self.sequences
        lengths = np.maximum(seq.lengths - drop_last, 0)
        keep = np.arange(len(seq.items)) - np.repeat(seq.offsets[:-1], seq.lengths)
        keep = keep < np.repeat(lengths, seq.lengths)
        return keep & ~self.cold_holdout[seq.items]

    def _warm_prefix(self, drop_last: int) -> Sequences:
        """Each user's sequence without its last `drop_last` items and without held-out items."""
        seq = self.sequences
        keep = self.warm_prefix_mask(drop_last)
        kept_lengths = np.bincount(seq.row_ids()[keep], minlength=seq.n_users)
        offsets = np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int64)
        return Sequences(offsets, seq.items[keep])

    def train_sequences(self, held_back: int = 0) -> Sequences:
        """Training data: everything but the last two items of each user, held-out items
        removed. held_back: that many more of each user's last items left out, so that a
        validation history ends with items never trained on in that user's context, as a
        test history (and a served request) does."""
        return self._warm_prefix(drop_last=2 + held_back)

    def _eval_set(self, drop_last: int, skip_cold_targets: bool) -> EvalSet:
        seq = self.sequences
        history = self._warm_prefix(drop_last=drop_last)
        targets = seq.items[seq.offsets[1:] - drop_last]
        ok = history.lengths > 0
        if skip_cold_targets:
            ok &= ~self.cold_holdout[targets]
        users = np.flatnonzero(ok)
        return EvalSet(users=users, history=history.select(users), targets=targets[users])

    def validation(self) -> EvalSet:
        """Second-to-last item as target, training items as history. Users whose
        validation target is held out are skipped: no model may see those items."""
        return self._eval_set(drop_last=2, skip_cold_targets=True)

    def test(self) -> EvalSet:
        """Last item as target, everything before it (held-out items removed) as history."""
        return self._eval_set(drop_last=1, skip_cold_targets=False)

    def train_counts(self) -> np.ndarray:
        """(N + 1,) int64 number of training interactions of each item ([0] = 0)."""
        return np.bincount(self.train_sequences().items, minlength=self.n_items + 1)

    def item_groups(self) -> np.ndarray:
        """(N + 1,) int8 group of each item: HEAD, TAIL or COLD (index into GROUPS)."""
        counts = self.train_counts()
        groups = np.full(self.n_items + 1, COLD, dtype=np.int8)
        warm = np.flatnonzero(warm_mask(counts))
        # Most popular first; ties broken by id so the split is deterministic.
        order = warm[np.lexsort((warm, -counts[warm]))]
        n_head = int(np.ceil(self.config.head_fraction * len(warm)))
        groups[order[:n_head]] = HEAD
        groups[order[n_head:]] = TAIL
        return groups

    def summary(self) -> dict:
        groups = self.item_groups()
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            **{f"{g}_items": int((groups[1:] == i).sum()) for i, g in enumerate(GROUPS)},
            "cold_holdout_items": int(self.cold_holdout.sum()),
        }


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the rows that survive an iterated k-core filter.

    users, items: (n,) int codes (0..n_users-1, 0..n_items-1).
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        u_cnt = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        i_cnt = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        new_keep = keep & (u_cnt[users] >= k) & (i_cnt[items] >= k)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def preprocess(raw: RawDataset, config: PreprocessConfig) -> ProcessedDataset:
    """Apply the protocol of the module docstring to a raw dataset."""
    inter = raw.interactions
    if len(inter) == 0:
        raise EmptyDatasetError(f"{raw.name}: the source holds no interactions")
    user_codes, user_uniques = pd.factorize(inter["user_id"], sort=True)
    item_codes, item_uniques = pd.factorize(inter["item_id"], sort=True)
    timestamps = inter["timestamp"].to_numpy(dtype=np.int64)

    keep = k_core(user_codes, item_codes, config.k_core)
    if not keep.any():
        raise EmptyDatasetError(
            f"{raw.name}: no interactions left after the {config.k_core}-core filter "
            f"({len(inter)} rows, {len(user_uniques)} users, {len(item_uniques)} items in the "
            "source); lower k_core or bring more data"
        )
    rows = np.flatnonzero(keep)
    user_codes, item_codes, timestamps = user_codes[rows], item_codes[rows], timestamps[rows]

    # Re-number the survivors contiguously: users 0..U-1, items 1..N (0 = padding).
    used_users, user_codes = np.unique(user_codes, return_inverse=True)
    used_items, item_codes = np.unique(item_codes, return_inverse=True)
    item_codes = item_codes + 1

    # Chronological per user; equal timestamps keep the source row order (rows is sorted).
    order = np.lexsort((rows, timestamps, user_codes))
    user_codes, item_codes, timestamps = user_codes[order], item_codes[order], timestamps[order]
    lengths = np.bincount(user_codes, minlength=len(used_users))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    sequences = Sequences(offsets, item_codes.astype(np.int64))

    item_ids = np.concatenate([[""], item_uniques[used_items].astype(str)])
    user_ids = np.asarray(user_uniques[used_users]).astype(str)
    items = _item_table(raw, item_ids)
    cold = _cold_holdout(item_codes, timestamps, len(item_ids), config.cold_item_fraction)

    dataset = ProcessedDataset(
        name=raw.name,
        fingerprint=raw.fingerprint,
        config=config,
        item_ids=item_ids,
        user_ids=user_ids,
        items=items,
        sequences=sequences,
        timestamps=timestamps,
        cold_holdout=cold,
    )
    if len(dataset.test().users) == 0:
        raise EmptyDatasetError(f"{raw.name}: no user has a history left to evaluate")
    logger.info("preprocessed %s", dataset.summary())
    return dataset


def _item_table(raw: RawDataset, item_ids: np.ndarray) -> pd.DataFrame:
    """Text columns aligned with internal ids; missing items and fields become ""."""
    source = raw.items.copy()
    source["item_id"] = source["item_id"].astype(str)
    source = source.drop_duplicates("item_id", keep="first").set_index("item_id")
    table = pd.DataFrame({"item_id": item_ids})
    for column in ITEM_TEXT_COLUMNS:
        if column in source.columns:
            values = source[column].reindex(item_ids).fillna("").astype(str).to_numpy()
        else:
            values = np.full(len(item_ids), "", dtype=object)
        table[column] = values
    return table


def _cold_holdout(
    item_codes: np.ndarray, timestamps: np.ndarray, n_ids: int, fraction: float
) -> np.ndarray:
    """The newest `fraction` of items by first interaction time ([0] is never held out)."""
    cold = np.zeros(n_ids, dtype=bool)
    n_cold = round(fraction * (n_ids - 1))
    if n_cold == 0:
        return cold
    first_seen = np.full(n_ids, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, item_codes, timestamps)
    ids = np.arange(1, n_ids)
    newest_first = ids[np.lexsort((-ids, -first_seen[1:]))]
    cold[newest_first[:n_cold]] = True
    return cold
