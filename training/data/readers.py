"""Readers that turn a data source into a `RawDataset`.

Supported sources:

- MovieLens-100K, from the copy shipped inside the installed `recbole==1.2.1` package
  (`read_movielens_100k`; the data is read in place and never copied into this repo);
- RecBole atomic files (`read_recbole_atomic`): a tab-separated `<name>.inter` with a
  typed header (`user_id:token  item_id:token  timestamp:float ...`) and an optional
  `<name>.item` beside it carrying item text;
- Amazon review 5-core dumps (`read_amazon`, `read_amazon_dir`): JSON-lines reviews
  (`reviewerID`, `asin`, `unixReviewTime`) plus optional metadata, plain or gzipped.

`load_raw_dataset(spec)` dispatches a CLI string to the right reader. Every reader raises
`DataFormatError` naming the file (and the 1-based line, where the problem is a row).
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from training.data.schema import INTERACTION_COLUMNS, DataFormatError, RawDataset

logger = logging.getLogger(__name__)

ML_100K = "ml-100k"
RECBOLE_INSTALL_HINT = "pip install --no-deps recbole==1.2.1"

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
AMAZON_REVIEW_KEYS = ("reviewerID", "asin", "unixReviewTime")
AMAZON_TEXT_COLUMNS = ("title", "categories", "brand", "description")
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_HASH_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_JSON_DECODE = json.JSONDecoder().decode


# --------------------------------------------------------------------------- dispatch


def load_raw_dataset(spec: str) -> RawDataset:
    """Read the dataset named by a CLI spec.

    Accepted forms: `ml-100k` (MovieLens-100K from the installed recbole package); a
    RecBole atomic `.inter` file or a directory holding one; an Amazon reviews
    `.json`/`.jsonl` file (optionally `.gz`) or a directory of reviews + meta files.
    """
    if spec.strip().lower() == ML_100K:
        return read_movielens_100k()
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix == ".inter":
            return read_recbole_atomic(path)
        if _is_json_name(path.name):
            return read_amazon(path)
    elif path.is_dir():
        if any(path.glob("*.inter")):
            return read_recbole_atomic(path)
        if any(_is_json_name(p.name) for p in path.iterdir() if p.is_file()):
            return read_amazon_dir(path)
    problem = "does not exist" if not path.exists() else "is not a recognised dataset source"
    raise ValueError(
        f"dataset {spec!r} {problem}. Accepted forms: 'ml-100k'; 'synthetic'; a RecBole "
        "atomic .inter file or a directory containing one (optional .item beside it); an "
        "Amazon reviews file (.json, .jsonl, optionally .gz) or a directory holding one "
        "reviews file and at most one meta_*.json(.gz) file."
    )


# --------------------------------------------------------------------------- MovieLens


def read_movielens_100k() -> RawDataset:
    """MovieLens-100K as shipped in recbole 1.2.1 (`dataset_example/ml-100k`), read in place.

    recbole itself is never imported (its import pulls dependencies this project does not
    install); the package directory is only located.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None:
        raise RuntimeError(
            "MovieLens-100K is read from the recbole package, which is not installed; "
            f"run `{RECBOLE_INSTALL_HINT}`"
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        directory = Path(root) / "dataset_example" / ML_100K
        if (directory / f"{ML_100K}.inter").is_file():
            raw = read_recbole_atomic(directory)
            return RawDataset(ML_100K, raw.interactions, raw.items, raw.fingerprint)
    raise RuntimeError(
        f"the installed recbole package ({roots}) has no dataset_example/{ML_100K}; "
        f"run `{RECBOLE_INSTALL_HINT}`"
    )


# --------------------------------------------------------------------------- RecBole


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
    return RawDataset(inter_path.stem, interactions, items, _fingerprint("recbole", files))


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


# --------------------------------------------------------------------------- Amazon


def read_amazon(reviews_path: str | Path, meta_path: str | Path | None = None) -> RawDataset:
    """Amazon review dumps (the 2014 / 2018 5-core files behind Beauty, Sports, ...).

    Reviews: JSON lines (optionally gzipped) with `reviewerID`, `asin` and an integer
    `unixReviewTime`; other keys are ignored. Metadata (optional): one object per line
    with `asin` and optional `title`, `categories` (2014: list of lists) or `category`
    (2018: list), `brand`, `description` (str or list); 2014 files are Python literals
    rather than JSON and are read with `ast.literal_eval`.
    """
    reviews_path = Path(reviews_path).expanduser()
    interactions = _read_amazon_reviews(reviews_path)
    files = [reviews_path]
    if meta_path is not None:
        meta_path = Path(meta_path).expanduser()
        items = _read_amazon_meta(meta_path)
        files.append(meta_path)
    else:
        items = pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    logger.info(
        "read %d reviews and %d item rows from %s", len(interactions), len(items), reviews_path
    )
    fingerprint = _fingerprint("amazon", files)
    return RawDataset(_amazon_name(reviews_path), interactions, items, fingerprint)


def read_amazon_dir(path: str | Path) -> RawDataset:
    """An Amazon dataset directory: one reviews file and at most one `meta*` file.

    JSON files whose name starts with `meta` are metadata; the other JSON file is the
    reviews (when there are several, the one whose name contains `review` or ends in `_5`).
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DataFormatError(directory, "directory not found")
    files = sorted(p for p in directory.iterdir() if p.is_file() and _is_json_name(p.name))
    metas = [p for p in files if p.name.lower().startswith("meta")]
    reviews = [p for p in files if p not in metas]
    if len(reviews) > 1:
        reviews = [p for p in reviews if _looks_like_reviews(p.name)]
    if len(reviews) != 1:
        found = [p.name for p in files]
        raise DataFormatError(
            directory,
            f"expected exactly one reviews file (*.json[l][.gz] whose name contains 'review' "
            f"or ends in '_5'), found {len(reviews)} among {found}",
        )
    if len(metas) > 1:
        raise DataFormatError(
            directory, f"expected at most one meta file, found {[p.name for p in metas]}"
        )
    return read_amazon(reviews[0], metas[0] if metas else None)


def _read_amazon_reviews(path: Path) -> pd.DataFrame:
    """user_id, item_id (str) and timestamp (int64) from a reviews JSON-lines file."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    for line, record in _json_records(path):
        try:
            user, item, time = record["reviewerID"], record["asin"], record["unixReviewTime"]
        except KeyError as exc:
            raise DataFormatError(
                path, f"review lacks the key {exc.args[0]!r}", line=line
            ) from None
        # Fast path for well-formed records; the helpers validate and convert the rest.
        if not (type(user) is str and user and type(item) is str and item):
            user = _id_text(user, "reviewerID", path, line)
            item = _id_text(item, "asin", path, line)
        if type(time) is not int:
            time = _unix_time(time, path, line)
        users.append(user)
        items.append(item)
        times.append(time)
    if not users:
        raise DataFormatError(path, "file holds no reviews")
    try:
        timestamps = np.array(times, dtype=np.int64)
    except OverflowError:
        raise DataFormatError(path, "a unixReviewTime is out of the int64 range") from None
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": timestamps})


def _read_amazon_meta(path: Path) -> pd.DataFrame:
    """item_id plus title, categories, brand, description from a metadata file."""
    columns: dict[str, list[str]] = {name: [] for name in ("item_id", *AMAZON_TEXT_COLUMNS)}
    seen: set[str] = set()
    records = 0
    for line, record in _json_records(path):
        records += 1
        if "asin" not in record:
            raise DataFormatError(path, "metadata record lacks the key 'asin'", line=line)
        asin = _id_text(record["asin"], "asin", path, line)
        if asin in seen:
            continue  # keep the first record of an item
        seen.add(asin)
        columns["item_id"].append(asin)
        columns["title"].append(_plain_text(record.get("title")))
        categories = [record.get("categories"), record.get("category")]
        columns["categories"].append(", ".join(dict.fromkeys(_flatten_strings(categories))))
        columns["brand"].append(_plain_text(record.get("brand")))
        columns["description"].append(_plain_text(record.get("description")))
    if len(seen) < records:
        logger.warning(
            "%s: %d duplicate asins; kept the first record of each", path, records - len(seen)
        )
    return pd.DataFrame(columns)


def _json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) per non-blank line; JSON first, Python literal as fallback."""
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    number = 0
    with _open_text(path) as handle:
        lines = enumerate(handle, start=1)
        while True:
            try:
                number, text = next(lines)
            except StopIteration:
                break
            except UnicodeDecodeError as exc:
                raise DataFormatError(path, f"not UTF-8 ({exc})", line=number + 1) from None
            except (OSError, EOFError) as exc:  # truncated or corrupt gzip
                raise DataFormatError(path, f"cannot read the file ({exc})") from None
            if text.strip():
                yield number, _parse_record(text, path, number)
    if number == 0:
        raise DataFormatError(path, "file is empty")


def _open_text(path: Path) -> TextIO:
    """The file opened as UTF-8 text, decompressed when it is gzip (by magic bytes)."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _parse_record(text: str, path: Path, line: int) -> dict[str, Any]:
    """One line as a dict: strict JSON, else a Python literal (2014 metadata files)."""
    try:
        record = _JSON_DECODE(text)
    except ValueError as json_error:
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise DataFormatError(path, f"invalid JSON ({json_error})", line=line) from None
    if not isinstance(record, dict):
        raise DataFormatError(path, f"expected an object, got {type(record).__name__}", line=line)
    return record


def _id_text(value: object, key: str, path: Path, line: int) -> str:
    """An id value (str, or int turned into str) that must not be empty."""
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    raise DataFormatError(path, f"{key} must be a non-empty string, got {value!r}", line=line)


def _unix_time(value: object, path: Path, line: int) -> int:
    """unixReviewTime as an int (ints, integral floats and digit strings are accepted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise DataFormatError(path, f"unixReviewTime must be an integer, got {value!r}", line=line)


def _flatten_strings(value: object) -> Iterator[str]:
    """Non-empty stripped strings from arbitrarily nested lists, in order."""
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, (list, tuple)):
        for element in value:
            yield from _flatten_strings(element)


def _plain_text(value: object) -> str:
    """A metadata field as text: str as is, lists joined with spaces, None as ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return " ".join(_flatten_strings(value))
    return str(value)


def _is_json_name(name: str) -> bool:
    return name.lower().endswith(JSON_SUFFIXES)


def _looks_like_reviews(name: str) -> bool:
    stem = _strip_json_suffix(name).lower()
    return "review" in stem or stem.endswith("_5")


def _strip_json_suffix(name: str) -> str:
    for suffix in sorted(JSON_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _amazon_name(reviews_path: Path) -> str:
    """Dataset name from the reviews file: `reviews_Beauty_5.json.gz` -> `Beauty_5`."""
    stem = _strip_json_suffix(reviews_path.name)
    return re.sub(r"^reviews?_", "", stem, flags=re.IGNORECASE) or stem


# --------------------------------------------------------------------------- fingerprint


def _fingerprint(reader: str, paths: Iterable[Path]) -> str:
    """sha256 (first 16 hex chars) over the reader name and the bytes of each file."""
    digest = hashlib.sha256(reader.encode())
    for path in paths:
        digest.update(b"\0file\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]
