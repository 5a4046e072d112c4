"""Event logs as catalogs export them: interactions in Parquet or CSV (one row per event),
plus an optional item table in either format, with the columns named by an
`EventColumns` mapping (`--user-column`, `--item-column`, ... or a recipe's [data]).

Read in record batches (pyarrow), so memory holds one batch of the file plus the result:
ids are dictionary-encoded batch by batch into integer codes, and the interactions come
out as pandas Categoricals over the sorted ids, not one Python string per event. The
result is what the RecBole reader gives for the same data (tests/training/data/
test_events.py checks it): ids as strings, timestamps as int64 seconds (numbers, floored,
or ISO-8601 dates, or Parquet timestamp columns), rows in file order.

Item text: the `text` columns, joined with ". " in the order given, become the item's
leading text (the `title` column of RawDataset); the `category` column becomes
`categories`. They come from the item table when one is given, else from each item's
first event (flat logs often repeat item attributes on every row).

Errors are `DataFormatError`s naming the file and, where the problem is a row, the data
row (1 = the first row after a CSV header).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.config import Config
from training.data.readers.fingerprint import fingerprint_files
from training.data.schema import DataFormatError, RawDataset

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
BATCH_ROWS = 1 << 16  # rows per record batch: ~MBs of ids, whatever the file size
PYARROW_HINT = "reading Parquet/CSV event logs needs pyarrow: pip install 'pyarrow>=14'"


@dataclass(frozen=True)
class EventColumns(Config):
    """Which column of the files holds what. The item table uses `item` for its ids too."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    text: tuple[str, ...] = ()  # item text columns, joined in this order
    category: str | None = None  # item category column (-> RawDataset `categories`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", tuple(self.text))
        named = [self.user, self.item, self.timestamp]
        if len(set(named)) < 3 or not all(isinstance(n, str) and n for n in named):
            raise ValueError(
                f"EventColumns: user, item and timestamp must be three different column "
                f"names, got {named}"
            )

    def item_fields(self) -> list[str]:
        """The item-table columns read: text columns, then the category (no repeats)."""
        fields = [*self.text, *([self.category] if self.category else [])]
        return list(dict.fromkeys(f for f in fields if f != self.item))


def is_event_file(path: Path) -> bool:
    """Whether `path` is named like a file this reader takes."""
    name = path.name.lower()
    return name.endswith(PARQUET_SUFFIXES) or name.endswith(CSV_SUFFIXES)


def read_events(
    path: str | Path,
    columns: EventColumns | None = None,
    items_path: str | Path | None = None,
    batch_rows: int = BATCH_ROWS,
) -> RawDataset:
    """The interactions of a Parquet or CSV event log (and, when given, the item table in
    `items_path`) as a RawDataset; see the module docstring."""
    columns = columns or EventColumns()
    path = Path(path).expanduser()
    ids = {"user": _Vocabulary(), "item": _Vocabulary()}
    user_codes, item_codes, seconds = [], [], []
    first_seen: list[pd.DataFrame] = []  # item text from events (no item table)
    item_fields = columns.item_fields() if items_path is None else []
    wanted = [columns.user, columns.item, columns.timestamp, *item_fields]
    for batch, start in _batches(path, list(dict.fromkeys(wanted)), batch_rows):
        users = _ids(batch[columns.user], path, start, columns.user)
        items = _ids(batch[columns.item], path, start, columns.item)
        user_codes.append(ids["user"].encode(users))
        item_codes.append(ids["item"].encode(items))
        seconds.append(_seconds(batch[columns.timestamp], path, start, columns.timestamp))
        if item_fields:
            frame = batch[item_fields].assign(item_id=items)
            first_seen.append(frame.drop_duplicates("item_id"))
    if not user_codes:
        raise DataFormatError(path, "the file holds no interactions (no data rows)")
    interactions = pd.DataFrame(
        {
            "user_id": ids["user"].categorical(np.concatenate(user_codes)),
            "item_id": ids["item"].categorical(np.concatenate(item_codes)),
            "timestamp": np.concatenate(seconds),
        }
    )
    files = [path]
    if items_path is not None:
        items_path = Path(items_path).expanduser()
        items = _read_item_table(items_path, columns, batch_rows)
        files.append(items_path)
    elif item_fields:
        seen = pd.concat(first_seen, ignore_index=True).drop_duplicates("item_id")
        items = _item_text(seen.reset_index(drop=True), columns)
    else:
        items = pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    # The mapping changes what is read, so it is part of the source's identity.
    mapping = json.dumps(columns.to_dict(), sort_keys=True)
    logger.info(
        "read %d interactions (%d users, %d items) and %d item rows from %s",
        len(interactions),
        len(ids["user"]),
        len(ids["item"]),
        len(items),
        path,
    )
    return RawDataset(
        _stem(path), interactions, items, fingerprint_files(f"events {mapping}", files)
    )


class _Vocabulary:
    """External id (str) -> code, first seen first; grows batch by batch."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.codes)

    def encode(self, values: pd.Series) -> np.ndarray:
        """(n,) int64 codes of a batch's ids: the batch is factorised first, so the Python
        dict sees each distinct id of the batch once."""
        local, uniques = pd.factorize(values)
        lookup = np.fromiter(
            (self.codes.setdefault(u, len(self.codes)) for u in uniques),
            dtype=np.int64,
            count=len(uniques),
        )
        return lookup[local]

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        """The codes as a Categorical over the sorted ids (the order pandas' sorted
        factorize, and so preprocessing, gives plain strings)."""
        names = np.array(list(self.codes), dtype=object)
        order = np.argsort(names, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return pd.Categorical.from_codes(rank[codes], categories=names[order])


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _batches(path: Path, wanted: list[str], batch_rows: int) -> Iterator[tuple[pd.DataFrame, int]]:
    """(batch as a DataFrame of the `wanted` columns, index of its first row) over the
    file. Id and text columns of CSV files are read as strings, never type-guessed."""
    try:
        import pyarrow as pa
    except ImportError:
        raise DataFormatError(path, PYARROW_HINT) from None
    if not path.is_file():
        raise DataFormatError(path, "file not found" if not path.exists() else "not a file")
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        reader = _parquet_batches(path, wanted, batch_rows)
    elif name.endswith(CSV_SUFFIXES):
        reader = _csv_batches(path, wanted, batch_rows)
    else:
        raise DataFormatError(
            path, f"expected a Parquet ({PARQUET_SUFFIXES}) or CSV ({CSV_SUFFIXES}) file"
        )
    start = 0
    try:
        for batch in reader:
            if batch.num_rows:
                yield batch.to_pandas(), start
            start += batch.num_rows
    except (pa.ArrowInvalid, OSError) as error:
        raise DataFormatError(
            path, f"cannot read the file near data row {start + 1}: {error}"
        ) from None


def _check_columns(path: Path, available: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataFormatError(
            path,
            f"no column(s) {missing}; the file has columns {available}. Name the right ones "
            "with --user-column, --item-column, --time-column, --text-columns, "
            "--category-column (or the recipe's [data] section)",
        )


def _parquet_batches(path: Path, wanted: list[str], batch_rows: int) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataFormatError(path, f"not a readable Parquet file ({error})") from None
    _check_columns(path, parquet.schema_arrow.names, wanted)
    return parquet.iter_batches(batch_size=batch_rows, columns=wanted)


def _csv_batches(path: Path, wanted: list[str], batch_rows: int) -> Iterator:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t" if ".tsv" in path.name.lower() else ",")
    # ~100 bytes a row: blocks of about batch_rows rows.
    read = pacsv.ReadOptions(block_size=max(1 << 16, batch_rows * 100))
    try:
        with pacsv.open_csv(path, read_options=read, parse_options=parse) as probe:
            available = probe.schema.names
    except pa.ArrowInvalid as error:
        if "Empty CSV file" in str(error):
            raise DataFormatError(path, "file is empty (no header, no rows)") from None
        raise DataFormatError(path, f"not a readable CSV file ({error})") from None
    _check_columns(path, available, wanted)
    convert = pacsv.ConvertOptions(
        include_columns=wanted,
        column_types={c: pa.string() for c in wanted},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def _ids(values: pd.Series, path: Path, start: int, column: str) -> pd.Series:
    """A batch's id column as strings; DataFormatError on a missing or empty id."""
    if values.dtype.kind == "f":  # ints with nulls come back as floats: 7.0 -> "7"
        whole = values.dropna()
        if (whole == np.floor(whole)).all():
            values = values.astype("Int64")
    text = values.astype("string")
    bad = (text.isna() | (text.str.strip() == "")).to_numpy(dtype=bool)
    if bad.any():
        row = start + int(np.argmax(bad)) + 1
        raise DataFormatError(path, f"empty {column!r} at data row {row}")
    return text.astype(object)


def _seconds(values: pd.Series, path: Path, start: int, column: str) -> np.ndarray:
    """A batch's timestamps as int64 seconds: a datetime column, numbers (floored) or
    strings holding numbers or ISO-8601 dates."""
    if values.dtype.kind == "M" or isinstance(values.dtype, pd.DatetimeTZDtype):
        bad = values.isna().to_numpy()
        if not bad.any():
            as_utc = values.dt.tz_localize("UTC") if values.dt.tz is None else values
            epoch = pd.Timestamp(0, tz="UTC")
            return ((as_utc - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    else:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers) | (np.abs(numbers) >= 2.0**62)
        if not bad.any():
            if values.dtype.kind in "iu":
                return values.to_numpy(dtype=np.int64)
            return np.floor(numbers).astype(np.int64)
        if values.dtype.kind not in "iuf":
            dates = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
            bad_dates = dates.isna().to_numpy()
            if not bad_dates.any():
                epoch = pd.Timestamp(0, tz="UTC")
                return ((dates - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
            if bad_dates.sum() < bad.sum():  # report what the likelier reading rejects
                bad = bad_dates
    first = int(np.argmax(bad))
    raise DataFormatError(
        path,
        f"unparsable timestamp {values.iloc[first]!r} in column {column!r} at data row "
        f"{start + first + 1} (expected seconds since the epoch, an ISO-8601 date or a "
        f"timestamp column; {int(bad.sum())} bad value(s) in this batch)",
    )


def _read_item_table(path: Path, columns: EventColumns, batch_rows: int) -> pd.DataFrame:
    """The item table: item_id plus the mapped text, first row per item."""
    fields = columns.item_fields()
    parts = []
    for batch, start in _batches(path, [columns.item, *fields], batch_rows):
        ids = _ids(batch[columns.item], path, start, columns.item)
        parts.append(batch[fields].assign(item_id=ids))
    if not parts:
        raise DataFormatError(path, "the item table holds no rows")
    table = pd.concat(parts, ignore_index=True)
    duplicated = table["item_id"].duplicated()
    if duplicated.any():
        logger.warning("%s: %d duplicate item rows; keeping the first", path, duplicated.sum())
        table = table[~duplicated].reset_index(drop=True)
    return _item_text(table, columns)


def _clean(values: pd.Series) -> pd.Series:
    """Text as str, "" where missing."""
    return values.astype("string").fillna("").str.strip().astype(object)


def _item_text(table: pd.DataFrame, columns: EventColumns) -> pd.DataFrame:
    """item_id + `title` (the text columns joined) + `categories` (the category column)."""
    items = pd.DataFrame({"item_id": table["item_id"].to_numpy(dtype=object)})
    if columns.text:
        parts = [_clean(table[c]) for c in columns.text]
        joined = parts[0]
        for part in parts[1:]:
            sep = np.where((joined != "") & (part != ""), ". ", "")
            joined = joined + sep + part
        items["title"] = joined.to_numpy(dtype=object)
    if columns.category:
        items["categories"] = _clean(table[columns.category]).to_numpy(dtype=object)
    return items
