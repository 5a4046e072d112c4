"""Amazon review 5-core dumps (the 2014 / 2018 files behind Beauty, Sports, ...): JSON-lines
reviews (`reviewerID`, `asin`, `unixReviewTime`) plus optional metadata, plain or gzipped.

Errors are `DataFormatError`s naming the file and, where the problem is a record, its
1-based line.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from training.data.readers.fingerprint import fingerprint_files
from training.data.schema import DataFormatError, RawDataset

logger = logging.getLogger(__name__)

AMAZON_REVIEW_KEYS = ("reviewerID", "asin", "unixReviewTime")
AMAZON_TEXT_COLUMNS = ("title", "categories", "brand", "description")
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_JSON_DECODE = json.JSONDecoder().decode


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
    fingerprint = fingerprint_files("amazon", files)
    return RawDataset(_amazon_name(reviews_path), interactions, items, fingerprint)


def read_amazon_dir(path: str | Path) -> RawDataset:
    """An Amazon dataset directory: one reviews file and at most one `meta*` file.

    JSON files whose name starts with `meta` are metadata; the other JSON file is the
    reviews (when there are several, the one whose name contains `review` or ends in `_5`).
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DataFormatError(directory, "directory not found")
    files = sorted(p for p in directory.iterdir() if p.is_file() and is_json_name(p.name))
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


def is_json_name(name: str) -> bool:
    """Whether the file name has an Amazon dump's suffix (.json or .jsonl, optionally .gz)."""
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
