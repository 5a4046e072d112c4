"""The item cache's wire format: one compact JSON object per item id, in the Redis
store's `items` hash (redis_store.py), which add_items.lua reads to refuse a bundle id
(`o` is "b") or to compare an added item's content hash. Bundle items are written once
per bundle version from the bundle itself; added items are their `ItemRecord.to_json`.

Bundle entries are kept small (a million of them are written at a version's first
start): `{"o":"b","t":[<L code tokens>, <dedup token>]}`. The placement bases are read
back from the same entries (placement.bundle_bases), so SQLite mode uses this format too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

BUNDLE_ORIGIN = "b"  # the `o` of a bundle item: add_items.lua tests for exactly this


def bundle_entries(external_ids: np.ndarray, item_tokens: np.ndarray) -> Iterator[tuple[str, str]]:
    """(external id, compact JSON) of every bundle item; row 0 (padding) is left out.
    Formatted by hand, not by json.dumps: this runs once per item of the bundle."""
    for row in range(1, len(item_tokens)):
        toks = ",".join(str(int(t)) for t in item_tokens[row])
        yield str(external_ids[row]), f'{{"o":"{BUNDLE_ORIGIN}","t":[{toks}]}}'


def entry_tokens(value: str | bytes) -> list[int]:
    """The token row of a bundle entry: L code tokens, then the dedup token."""
    return [int(t) for t in json.loads(value)["t"]]
