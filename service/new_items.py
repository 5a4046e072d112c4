"""The cold-start path of POST /items (and of carrying items to a new bundle version):
an item's fields -> its text -> a text embedding -> this bundle's codes, vector and dedup
base, as an `ItemRecord` for the catalog store to place (the store assigns the dedup id).

It runs on a thread of its own (text encoding is read-only on the bundle), so /items
does not hold up recommendation batches while MiniLM runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.bundle import Bundle
from models.cold_start import ColdStart, NewItemCodes
from models.dedup_base import bundle_next_dedup
from models.item_attributes import split_categories
from models.text_encoder import item_description
from service.catalog import ItemRecord


class TextEncoderLike(Protocol):
    """models.text_encoder.TextEncoder, or a stand-in with the same two members."""

    @property
    def model_id(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class NewItemInput:
    """One item of a POST /items request: its id and free-form fields."""

    item_id: str
    fields: dict[str, object] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.fields, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def categories(self) -> tuple[str, ...]:
        """The `categories` field as names: a list as sent, a text split at commas."""
        return split_categories(self.fields.get("categories"))

    @property
    def text(self) -> str:
        fields = dict(self.fields)
        categories = fields.get("categories")
        if isinstance(categories, list | tuple):
            fields["categories"] = ", ".join(str(c) for c in categories)
        return item_description(fields)


@dataclass(frozen=True)
class ItemText:
    """What a record is made from: the same for a new item and for one carried over."""

    item_id: str
    content_hash: str
    text: str
    at: float
    categories: tuple[str, ...] = ()


class ItemTokenizer:
    """Item texts -> records holding one bundle's cold-start tokens and item vectors."""

    def __init__(self, bundle: Bundle, text_encoder: TextEncoderLike) -> None:
        self.text_encoder = text_encoder
        self._cold_start = ColdStart.from_bundle(bundle)
        self._index = bundle.prefix_index
        self._dedup_offset = bundle.layout.dedup_offset
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexcode-encode")

    def _codes(self, texts: list[str]) -> tuple[np.ndarray, NewItemCodes]:
        """(dedup base per item, codes): the base from the bundle's own prefix index."""
        codes = self._cold_start.tokenize(self.text_encoder.encode(texts))
        return bundle_next_dedup(self._index, codes.prefixes, self._dedup_offset), codes

    async def records(self, items: Sequence[ItemText]) -> list[ItemRecord]:
        if not items:
            return []
        loop = asyncio.get_running_loop()
        base, codes = await loop.run_in_executor(
            self._executor, self._codes, [it.text for it in items]
        )
        return [
            ItemRecord(
                id=it.item_id,
                hash=it.content_hash,
                prefix=tuple(int(t) for t in codes.prefixes[i]),
                base=int(base[i]),
                cf=tuple(int(c) for c in codes.cf_codes[i]),
                sem=tuple(int(c) for c in codes.sem_codes[i]),
                alpha=round(float(codes.alpha[i]), 6),
                n_cf=int(codes.n_cf[i]),
                vector=tuple(float(v) for v in codes.vectors[i]),
                at=it.at,
                text=it.text,
                categories=tuple(it.categories),
                order=tuple(map(tuple, codes.placement_order[i].tolist())),
            )
            for i, it in enumerate(items)
        ]

    async def warm_up(self) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.text_encoder.encode, ["warm-up item"]
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
