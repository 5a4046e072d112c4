"""Readers that turn a data source into a `RawDataset`, one module per source.

Supported sources:

- MovieLens-100K, from the copy shipped inside the installed `recbole==1.2.1` package
  (`movielens.read_movielens_100k`; the data is read in place and never copied into this
  repo);
- RecBole atomic files (`recbole.read_recbole_atomic`): a tab-separated `<name>.inter`
  with a typed header (`user_id:token  item_id:token  timestamp:float ...`) and an
  optional `<name>.item` beside it carrying item text;
- Amazon review 5-core dumps (`amazon.read_amazon`, `amazon.read_amazon_dir`): JSON-lines
  reviews (`reviewerID`, `asin`, `unixReviewTime`) plus optional metadata, plain or
  gzipped;
- event logs in Parquet or CSV (`events.read_events`): one row per interaction, columns
  named by an `EventColumns` mapping, plus an optional item table; read in record
  batches, so large exports fit in memory.

`load_raw_dataset(spec)` (here) dispatches a CLI string to the right reader. Every reader
raises `DataFormatError` naming the file (and the 1-based line, where the problem is a row).
"""

from __future__ import annotations

from pathlib import Path

from training.data.readers.amazon import (
    AMAZON_REVIEW_KEYS,
    AMAZON_TEXT_COLUMNS,
    JSON_SUFFIXES,
    is_json_name,
    read_amazon,
    read_amazon_dir,
)
from training.data.readers.events import EventColumns, is_event_file, read_events
from training.data.readers.movielens import ML_100K, RECBOLE_INSTALL_HINT, read_movielens_100k
from training.data.readers.recbole import RECBOLE_TEXT_FIELDS, read_recbole_atomic
from training.data.schema import RawDataset


def load_raw_dataset(
    spec: str, columns: EventColumns | None = None, item_table: Path | None = None
) -> RawDataset:
    """Read the dataset named by a CLI spec.

    Accepted forms: `ml-100k` (MovieLens-100K from the installed recbole package); a
    RecBole atomic `.inter` file or a directory holding one; an Amazon reviews
    `.json`/`.jsonl` file (optionally `.gz`) or a directory of reviews + meta files; a
    Parquet or CSV event log, read with `columns` (default: user_id, item_id,
    timestamp) and the optional `item_table` file.
    """
    path = Path(spec).expanduser()
    if item_table is not None and not is_event_file(path):
        raise ValueError(
            f"an item table ({item_table}) goes with a Parquet or CSV event log; "
            f"dataset {spec!r} is not one (RecBole and Amazon sources carry their own)"
        )
    if spec.strip().lower() == ML_100K:
        return read_movielens_100k()
    if is_event_file(path):  # a missing file too: the reader says which
        return read_events(path, columns, item_table)
    if path.is_file():
        if path.suffix == ".inter":
            return read_recbole_atomic(path)
        if is_json_name(path.name):
            return read_amazon(path)
    elif path.is_dir():
        if any(path.glob("*.inter")):
            return read_recbole_atomic(path)
        if any(is_json_name(p.name) for p in path.iterdir() if p.is_file()):
            return read_amazon_dir(path)
    problem = "does not exist" if not path.exists() else "is not a recognised dataset source"
    raise ValueError(
        f"dataset {spec!r} {problem}. Accepted forms: 'ml-100k'; 'synthetic'; a RecBole "
        "atomic .inter file or a directory containing one (optional .item beside it); an "
        "Amazon reviews file (.json, .jsonl, optionally .gz) or a directory holding one "
        "reviews file and at most one meta_*.json(.gz) file; a Parquet (.parquet) or CSV "
        "(.csv, .tsv, optionally .gz) event log."
    )


__all__ = [
    "AMAZON_REVIEW_KEYS",
    "AMAZON_TEXT_COLUMNS",
    "JSON_SUFFIXES",
    "ML_100K",
    "RECBOLE_INSTALL_HINT",
    "RECBOLE_TEXT_FIELDS",
    "EventColumns",
    "load_raw_dataset",
    "read_amazon",
    "read_amazon_dir",
    "read_events",
    "read_movielens_100k",
    "read_recbole_atomic",
]
