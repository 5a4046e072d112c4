"""RecBole atomic files: a tab-separated `<name>.inter` with a typed header
(`user_id:token  item_id:token  timestamp:float ...`) and an optional `<name>.item` beside
it carrying item text.

Errors are `DataFormatError`s naming the file and, where the problem is a row, its
1-based line.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.readers.fingerprint import fingerprint_files
from training.data.schema import INTERACTION_COLUMNS, DataFormatError, RawDataset

logger = logging.getLogger(__name__)

# RecBole .item field name (the part before ':') -> RawDataset item text column.
RECBOLE_TEXT_FIELDS = {
    "title": "title",
    "movie_title": "title",
    "name": "title",
    "class": "categories",
    "categories": "categories",
    "genre": "categories",
    "category": "categories",
    "brand": "brand",
    "release_year": "year",
    "year": "year",
    "description": "description",
    "desc": "description",
}


def read_recbole_atomic(path: str | Path) -> RawDataset:
    """RecBole atomic files: `<name>.inter` plus optional `<name>.item`.

    `path` is a `.inter` file or a directory holding `<dirname>.inter` (or exactly one
    `*.inter`). Files are tab-separated with a `field:type` header. The `.inter` needs
    `user_id`, `item_id` and `timestamp` (numbers of seconds, or ISO-8601 dates); other
    fields are ignored. `.item` text fields are mapped per RECBOLE_TEXT_FIELDS. Ids stay
    strings; rows keep file order.
    """
    inter_path = _locate_inter(Path(path).expanduser())
    item_path = inter_path.with_suffix(".item")
    interactions = _read_inter(inter_path)
    if item_path.is_file():
        items = _read_item(item_path)
        files = [inter_path, item_path]
    else:
        logger.info("%s: no %s beside it; items carry no text", inter_path, item_path.name)
        items = pd.DataFrame({"item_id": pd.Series([], dtype=str)})
        files = [inter_path]
    logger.info(
        "read %d interactions and %d item rows from %s", len(interactions), len(items), inter_path
    )
    return RawDataset(inter_path.stem, interactions, items, fingerprint_files("recbole", files))


def _locate_inter(path: Path) -> Path:
    """The `.inter` file a RecBole path names (the file itself, or the one in a directory)."""
    if path.is_file():
        if path.suffix != ".inter":
            raise DataFormatError(path, "expected a RecBole .inter file")
        return path
    if not path.is_dir():
        raise DataFormatError(path, "file not found")
    named = path / f"{path.name}.inter"
    if named.is_file():
        return named
    found = sorted(p for p in path.glob("*.inter") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataFormatError(path, "directory holds no .inter file")
    names = [p.name for p in found]
    raise DataFormatError(path, f"several .inter files {names}; none named {named.name}")


def _read_inter(path: Path) -> pd.DataFrame:
    """The interactions of a `.inter` file: user_id, item_id (str), timestamp (int64)."""
    _, table, lines = _read_atomic(path, INTERACTION_COLUMNS, infer=("timestamp",))
    for column in ("user_id", "item_id"):
        _reject_empty(table[column], lines, path, column)
    if table.empty:
        raise DataFormatError(path, "the file holds a header but no interactions")
    timestamps = _parse_timestamps(table["timestamp"], lines, path)
    return pd.DataFrame(
        {"user_id": table["user_id"], "item_id": table["item_id"], "timestamp": timestamps}
    )


def _read_item(path: Path) -> pd.DataFrame:
    """The item table of a `.item` file: item_id (str) plus the mapped text columns."""
    header, table, lines = _read_atomic(path, ("item_id",), keep=_item_text_fields(path))
    _reject_empty(table["item_id"], lines, path, "item_id")
    items = pd.DataFrame({"item_id": table["item_id"].to_numpy(dtype=object)})
    for name in table.columns[1:]:
        values = table[name].astype(str).str.strip()
        if RECBOLE_TEXT_FIELDS[name] == "categories" and header[name] == "token_seq":
            values = values.str.split().str.join(", ")
        items[RECBOLE_TEXT_FIELDS[name]] = values.to_numpy(dtype=object)
    duplicated = items["item_id"].duplicated()
    if duplicated.any():
        logger.warning("%s: %d duplicate item rows; keeping the first", path, duplicated.sum())
        items = items[~duplicated].reset_index(drop=True)
    return items


def _item_text_fields(path: Path) -> list[str]:
    """The `.item` header fields that feed a text column (the first one per column wins)."""
    chosen: dict[str, str] = {}
    for name in _read_header(path):
        target = RECBOLE_TEXT_FIELDS.get(name)
        if target is None or name == "item_id":
            continue
        if target in chosen:
            logger.warning("%s: field %r duplicates %r; ignored", path, name, chosen[target])
        else:
            chosen[target] = name
    return list(chosen.values())


def _read_header(path: Path) -> dict[str, str | None]:
    """Parse the `field:type` header line into {field name: type or None}."""
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.strip():
        empty = path.stat().st_size == len(first)
        raise DataFormatError(path, "file is empty" if empty else "first line must be the header")
    try:
        fields = first.rstrip(b"\r\n").decode("utf-8-sig").split("\t")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"header is not UTF-8 ({exc})", line=1) from None
    header: dict[str, str | None] = {}
    for field in fields:
        name, _, kind = field.strip().partition(":")
        if not name:
            raise DataFormatError(path, f"empty field name in header {fields}", line=1)
        if name in header:
            raise DataFormatError(path, f"duplicate header field {name!r}", line=1)
        header[name] = kind or None
    return header


def _read_atomic(
    path: Path, required: Sequence[str], keep: Sequence[str] = (), infer: Sequence[str] = ()
) -> tuple[dict[str, str | None], pd.DataFrame, np.ndarray]:
    """Read the `required` + `keep` columns of an atomic file.

    Columns are strings, except those in `infer`, whose type pandas infers (numbers parse
    in C, far faster than strings converted afterwards).

    Returns the header, the table (columns named by field name) and, per table row, its
    1-based line number in the file.
    """
    header = _read_header(path)
    missing = [name for name in required if name not in header]
    if missing:
        raise DataFormatError(
            path,
            f"header lacks required column(s) {missing}; columns found: {list(header)}",
            line=1,
        )
    data = path.read_bytes()
    lines = _data_line_numbers(data, len(header), path)
    names = list(dict.fromkeys([*required, *keep]))
    positions = [list(header).index(name) for name in names]
    try:
        table = pd.read_csv(
            io.BytesIO(data),
            sep="\t",
            header=None,
            skiprows=1,
            usecols=positions,
            dtype={p: str for p, name in zip(positions, names, strict=True) if name not in infer},
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"file is not UTF-8 ({exc})") from None
    except pd.errors.ParserError as exc:
        raise DataFormatError(path, f"cannot parse the file ({exc})") from None
    except pd.errors.EmptyDataError:
        table = pd.DataFrame({p: pd.Series([], dtype=str) for p in positions})
    if len(table) != len(lines):
        raise DataFormatError(
            path,
            f"parsed {len(table)} rows but the file has {len(lines)} non-blank data lines "
            "(stray carriage returns?)",
        )
    table = table.rename(columns=dict(zip(positions, names, strict=True)))
    return header, table[names], lines


def _data_line_numbers(data: bytes, n_fields: int, path: Path) -> np.ndarray:
    """1-based line numbers of the non-blank data lines; raise on a wrong field count.

    Vectorised over the raw bytes: tabs are counted per line with numpy.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buf)]])
    if starts[-1] == len(buf):  # the file ends with a newline: no last partial line
        starts, ends = starts[:-1], ends[:-1]
    tabs = np.flatnonzero(buf == ord("\t"))
    tab_counts = np.bincount(np.searchsorted(newlines, tabs), minlength=len(starts))
    lengths = ends - starts
    last = buf[np.maximum(ends - 1, 0)]
    blank = (lengths == 0) | ((lengths == 1) & (last == ord("\r")))
    line_numbers = np.arange(1, len(starts) + 1)
    bad = (~blank) & (tab_counts[: len(starts)] != n_fields - 1)
    bad[0] = False  # the header defines the count
    if bad.any():
        first = int(np.argmax(bad))
        raise DataFormatError(
            path,
            f"expected {n_fields} tab-separated fields, found {tab_counts[first] + 1}",
            line=int(line_numbers[first]),
        )
    return line_numbers[1:][~blank[1:]]


def _reject_empty(values: pd.Series, lines: np.ndarray, path: Path, column: str) -> None:
    """Raise on the first empty value of an id column."""
    empty = (values.to_numpy(dtype=object) == "") if len(values) else np.zeros(0, dtype=bool)
    if empty.any():
        first = int(np.argmax(empty))
        raise DataFormatError(path, f"empty {column}", line=int(lines[first]))


def _parse_timestamps(values: pd.Series, lines: np.ndarray, path: Path) -> np.ndarray:
    """int64 seconds from numbers (int or float, floored) or, failing that, ISO-8601 dates.

    `values` is either already numeric (pandas inferred it while reading) or strings.
    """
    inferred_numeric = values.dtype.kind in "iuf"
    if inferred_numeric:
        numbers = values.to_numpy()
    else:
        values = values.astype(str)
        numbers = pd.to_numeric(values.to_numpy(dtype=object), errors="coerce")
    seconds, bad = _numeric_seconds(numbers)
    if seconds is not None:
        if len(seconds) and seconds.max() > 10**11:
            logger.warning("%s: timestamps look like milliseconds; they are read as seconds", path)
        return seconds
    if not inferred_numeric:
        dates = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
        bad_dates = dates.isna().to_numpy()
        if not bad_dates.any():
            epoch = pd.Timestamp(0, tz="UTC")
            return ((dates - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
        if bad_dates.sum() < bad.sum():
            bad = bad_dates
    first = int(np.argmax(bad))
    raise DataFormatError(
        path,
        f"unparsable timestamp {str(values.iloc[first])!r} (expected seconds since the epoch "
        f"or an ISO-8601 date; {int(bad.sum())} bad value(s) in total)",
        line=int(lines[first]),
    )


def _numeric_seconds(numbers: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(int64 seconds, or None when some value is not a finite number; the bad-value mask)."""
    as_float = np.asarray(numbers, dtype=np.float64)
    bad = ~np.isfinite(as_float) | (np.abs(as_float) >= 2.0**62)
    if bad.any():
        return None, bad
    if numbers.dtype.kind in "iu":
        return numbers.astype(np.int64), bad
    return np.floor(as_float).astype(np.int64), bad
