"""The wire format of an added item: what the stores keep, replicate and hand back.

One JSON object per item (`ItemRecord.to_json`), the same in the SQLite journal, in
Redis (the Lua scripts decode and re-encode it with cjson, so every field must survive
that round trip) and on the replication stream.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

STATUS_ADDED, STATUS_REPLACED, STATUS_UNCHANGED = "added", "replaced", "unchanged"


@dataclass(frozen=True)
class ItemRecord:
    """One added item's assignment, as stored and replicated.

    prefix: its L code tokens; base: first dedup id free after the bundle's items with
    this prefix; dedup: the assigned dedup id (-1 before assignment); seq: store-wide
    revision (larger = newer; a replace gets a new one); vector: its item vector for the
    dense head (C floats, this bundle's), so every replica serves it the same way; text:
    what the text encoder read, kept so a new bundle version can tokenize the item again
    (its codebooks differ) under the same id; categories: the item's category names
    (business-rule filters on /recommend); `at`, when it was added, is its added_at.

    Dedup placement (service/catalog/placement.py): `order` is the item's (L, W) placement
    order (`models.placement.placement_order`), handed to the store with a new item and never
    stored (`to_json` leaves it out); when the dedup block of its own prefix is full, the
    store gives it the first code sequence of that order with a free dedup id.
    `placement` is the step it got (0: its own codes); prefix and base are then those of
    the sequence it got.
    """

    id: str
    hash: str
    prefix: tuple[int, ...]
    base: int
    cf: tuple[int, ...]
    sem: tuple[int, ...]
    alpha: float
    n_cf: int
    vector: tuple[float, ...] = ()
    dedup: int = -1
    seq: int = 0
    at: float = 0.0
    text: str = ""
    placement: int = 0
    categories: tuple[str, ...] = ()
    order: tuple[tuple[int, ...], ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> str:
        data = asdict(replace(self, order=()))  # not deep-copied first: it is large
        del data["order"]
        data.update(
            prefix=list(self.prefix),
            cf=list(self.cf),
            sem=list(self.sem),
            vector=list(self.vector),
            categories=list(self.categories),
        )
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ItemRecord:
        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            hash=str(data["hash"]),
            prefix=tuple(int(x) for x in data["prefix"]),
            base=int(data["base"]),
            cf=tuple(int(x) for x in data["cf"]),
            sem=tuple(int(x) for x in data["sem"]),
            alpha=float(data["alpha"]),
            n_cf=int(data["n_cf"]),
            vector=tuple(float(x) for x in data.get("vector") or ()),
            dedup=int(data.get("dedup", -1)),
            seq=int(data.get("seq", 0)),
            at=float(data.get("at", 0.0)),
            text=str(data.get("text") or ""),
            placement=int(data.get("placement", 0)),
            # Absent in records stored before categories; an empty list comes back from
            # the Lua scripts' cjson as {} (an empty table encodes as an object).
            categories=tuple(str(c) for c in data.get("categories") or ()),
        )

    @property
    def prefix_key(self) -> str:
        return ",".join(str(t) for t in self.prefix)


@dataclass(frozen=True)
class AddOutcome:
    status: str  # added | replaced | unchanged
    record: ItemRecord


@dataclass(frozen=True)
class Retirement:
    """Whether an item is retired (DELETE /items/{id}) or restored, as stored and
    replicated. Keyed by the external id, not by bundle version: retiring is a fact about
    the catalogue, not about one model's tokens, so it holds for every version served
    (and outlives a swap by itself). seq: revision among retirements (larger = newer)."""

    id: str
    retired: bool
    seq: int = 0
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Retirement:
        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            retired=bool(data["retired"]),
            seq=int(data.get("seq", 0)),
            at=float(data.get("at", 0.0)),
        )
