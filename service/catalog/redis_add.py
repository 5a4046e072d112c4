"""The call convention of add_items.lua (the script that places a batch of new items in
Redis, atomically): the arguments it takes and the reply it gives, decoded into outcomes
or the refusal every store raises for the same case (store.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from models.placement import MAX_PLACEMENT_STEPS
from service.catalog.records import AddOutcome, ItemRecord
from service.catalog.store import dedup_exhausted, item_conflict

# The script's reply when Redis has lost the bundle's dedup bases (a restart without its
# data): the store reloads them, and the write is refused until then.
NO_BASES = b"nobases"


def add_args(
    records: Sequence[ItemRecord],
    replace: bool,
    dedup_size: int,
    stream_maxlen: int,
    with_orders: bool,
) -> list[object]:
    """ARGV of one run; with_orders: send each record's placement order (else "")."""
    args: list[object] = ["1" if replace else "0", dedup_size, stream_maxlen]
    args.append(MAX_PLACEMENT_STEPS)
    for rec in records:
        send = with_orders and rec.order
        args += [rec.to_json(), json.dumps(rec.order, separators=(",", ":")) if send else ""]
    return args


def wants_orders(reply: list, records: Sequence[ItemRecord]) -> bool:
    """Whether to run again with placement orders: an item's own prefix was full and the
    records have orders. (Orders are L x W tokens each and most items never need one, so
    they are sent only then; a refused run writes nothing.)"""
    return reply[0] == b"full" and any(r.order for r in records)


def lost_bases(reply: list) -> bool:
    """The script refused to place anything: Redis lost the bundle's dedup bases."""
    return reply[0] == NO_BASES


def parse_reply(reply: list, dedup_size: int) -> list[AddOutcome]:
    """The outcomes, in order, or the refusal raised (ItemConflict, DedupExhausted)."""
    status = reply[0].decode()
    if status == "bundle":
        raise item_conflict(reply[1].decode(), bundle=True)
    if status == "conflict":
        raise item_conflict(reply[1].decode(), bundle=False)
    if status == "full":
        raise dedup_exhausted(reply[1].decode(), dedup_size, int(reply[2]))
    return [
        AddOutcome(reply[i].decode(), ItemRecord.from_json(reply[i + 1]))
        for i in range(1, len(reply), 2)
    ]
