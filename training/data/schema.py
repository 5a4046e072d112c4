"""The raw dataset every reader produces and every later stage consumes.

A reader (MovieLens-100K, RecBole atomic files, Amazon 5-core, the synthetic generator)
turns its source into one `RawDataset`; from there on the pipeline does not care where
the data came from. Keeping this contract tiny is what lets users bring their own data.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# Columns of RawDataset.interactions, in this order.
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
# Text columns an item table may carry; readers fill the ones their source has. The
# semantic embedding stage joins the non-empty ones into one item description.
ITEM_TEXT_COLUMNS = ("title", "categories", "brand", "year", "description")


class DataFormatError(ValueError):
    """Input data that cannot be read; the message names the file and, where known, the line."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class RawDataset:
    """Interactions and item text as read from a source, before any filtering.

    interactions: one row per interaction, columns `user_id`, `item_id` (any hashable
        dtype: str for user data, int64 for the synthetic generator) and `timestamp`
        (int64, seconds). Row order is the source order; it is the tie-break for equal
        timestamps, so readers must not shuffle rows.
    items: one row per item, column `item_id` plus any of ITEM_TEXT_COLUMNS (str, "" when
        unknown). Items without a row get empty text; rows for items that never occur in
        interactions are ignored downstream.
    fingerprint: a stable hash of the source (file bytes, or generator config); the
        preprocessing cache key is built from it.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    fingerprint: str

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise ValueError(f"{self.name}: interactions lack columns {missing}")
        if "item_id" not in self.items.columns:
            raise ValueError(f"{self.name}: item table lacks column 'item_id'")
