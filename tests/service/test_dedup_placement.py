"""Dedup placement in the catalog stores (service/catalog/placement.py, add_items.lua): an
item whose own code prefix is full goes to the first code sequence of its placement order
with a free dedup id, the same in both stores, atomically across Redis replicas."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from models.dedup_base import bundle_next_dedup
from models.prefix_index import build_prefix_index
from service.catalog import ItemRecord, LocalCatalog, RedisCatalog, placement
from service.catalog.placement import bundle_bases
from service.errors import DedupExhausted, StoreUnavailable
from tests.bundle_factory import tiny_contents
from tests.service.conftest import REDIS_URL

pytestmark = pytest.mark.anyio

DEDUP_SIZE = 3
# Positions of three code tokens, two codes each, nearest first: 2^3 = 8 code sequences.
ORDER = ((5, 6), (6, 7), (7, 8))
# In placement order: (5,6,7) (5,6,8) (5,7,7) (5,7,8) (6,6,7) (6,6,8) (6,7,7) (6,7,8).
# The bundle holds (5,6,8) with dedup ids 0 and 1 (tokens 100, 101; the dedup block
# starts at 100), and (9,9,9) with id 0.
BUNDLE = [
    ("item-1", '{"o":"b","t":[5,6,8,100]}'),
    ("item-2", '{"o":"b","t":[5,6,8,101]}'),
    ("item-3", '{"o":"b","t":[9,9,9,100]}'),
]
CAPACITY = 8 * DEDUP_SIZE - 2  # every sequence's ids, but the bundle's two


def bundle_items():
    return iter(BUNDLE)


def new_item(item_id: str, content: str = "a") -> ItemRecord:
    return ItemRecord(
        id=item_id, hash=content, prefix=(5, 6, 7), base=0, cf=(1, 2, 3), sem=(5, 6, 7),
        alpha=0.05, n_cf=0, order=ORDER,
    )  # fmt: skip


def slots(outcomes) -> list[tuple[tuple[int, ...], int, int]]:
    return [(o.record.prefix, o.record.dedup, o.record.placement) for o in outcomes]


# What the first 8 items get, in order: the own prefix's 3 ids, the one id the bundle
# left at (5,6,8), then the next sequence's 3.
FIRST_EIGHT = [
    ((5, 6, 7), 0, 0), ((5, 6, 7), 1, 0), ((5, 6, 7), 2, 0),
    ((5, 6, 8), 2, 1),
    ((5, 7, 7), 0, 2), ((5, 7, 7), 1, 2), ((5, 7, 7), 2, 2),
    ((5, 7, 8), 0, 3),
]  # fmt: skip


def test_bundle_bases_are_what_the_prefix_index_says():
    contents = tiny_contents()
    tokens = contents.item_tokens[1:]
    entries = [
        (f"item-{i}", json.dumps({"o": "b", "t": row.tolist()})) for i, row in enumerate(tokens)
    ]
    bases = dict(bundle_bases(lambda: iter(entries)))
    index = build_prefix_index(tokens, np.arange(1, len(tokens) + 1), contents.layout.vocab_size)
    prefixes = np.unique(tokens[:, :-1], axis=0)
    want = bundle_next_dedup(index, prefixes, contents.layout.dedup_offset)
    assert [bases[",".join(map(str, p))] for p in prefixes.tolist()] == want.tolist()
    assert max(want) > 1  # the tiny bundle has prefixes shared by several items
    assert dict(bundle_bases(lambda: iter([]))) == {}


@pytest.mark.parametrize("offset", [3, 2**40])  # int64 keys; too large for them: row-wise
def test_bundle_bases_in_chunks_match_a_plain_count(monkeypatch, offset):
    """The chunked, keyed computation (no whole-array call holds the GIL for long) gives
    every prefix's largest dedup id + 1, across chunk boundaries and on both paths."""
    monkeypatch.setattr(placement, "_CHUNK", 7)
    rng = np.random.default_rng(0)
    prefixes = rng.integers(0, 4, size=(60, 3)) + offset
    dedup = rng.integers(0, 5, size=60)
    dedup[0] = 0  # the smallest last token is the dedup block's first
    entries = [
        (f"item-{i}", json.dumps({"o": "b", "t": [*row.tolist(), offset + 100 + int(d)]}))
        for i, (row, d) in enumerate(zip(prefixes, dedup, strict=True))
    ]
    want: dict[str, int] = {}
    for row, d in zip(prefixes.tolist(), dedup.tolist(), strict=True):
        key = ",".join(map(str, row))
        want[key] = max(want.get(key, 0), d + 1)
    got = list(placement.bundle_bases(lambda: iter(entries)))
    assert dict(got) == want
    assert len(got) == len(want)  # each prefix once


@pytest.fixture(params=["embedded", "redis"])
async def store(request, tmp_path: Path, redis_prefix: str):
    if request.param == "embedded":
        catalog = LocalCatalog(tmp_path / "journal.sqlite3", "v1", poll_s=0)
    else:
        catalog = RedisCatalog(REDIS_URL, redis_prefix, "v1")

    async def ignore(records):
        return None

    await catalog.start(bundle_items, ignore)
    yield catalog
    await catalog.close()


async def test_a_full_prefix_sends_items_along_their_placement_order(store) -> None:
    first = await store.add([new_item(f"n{i}") for i in range(5)], False, DEDUP_SIZE)
    second = await store.add([new_item(f"n{i}") for i in range(5, 8)], False, DEDUP_SIZE)
    assert slots(first + second) == FIRST_EIGHT  # counters carry over between batches
    stored = await store.get("n3")
    assert stored.prefix == (5, 6, 8) and stored.base == 2 and stored.placement == 1
    assert stored.order == ()  # the order is not stored
    again = await store.add([new_item("n3")], False, DEDUP_SIZE)
    assert again[0].status == "unchanged" and again[0].record == stored
    replaced = await store.add([new_item("n0", "other")], True, DEDUP_SIZE)
    assert slots(replaced) == [((5, 7, 8), 1, 3)]  # a new slot: ids are never reused


async def test_every_code_sequence_is_used_before_a_507(store) -> None:
    placed = await store.add([new_item(f"n{i}") for i in range(CAPACITY)], False, DEDUP_SIZE)
    assert len({(p, d) for p, d, _ in slots(placed)}) == CAPACITY
    assert {p for p, _, _ in slots(placed)} == {
        (a, b, c) for a in (5, 6) for b in (6, 7) for c in (7, 8)
    }
    with pytest.raises(DedupExhausted, match="nor for the 7 code sequences nearest to it"):
        await store.add([new_item("late"), new_item("later")], False, DEDUP_SIZE)
    assert await store.get("late") is None


async def test_an_item_without_an_order_only_takes_its_own_prefix(store) -> None:
    bare = [replace(new_item(f"n{i}"), order=()) for i in range(DEDUP_SIZE + 1)]
    with pytest.raises(DedupExhausted, match=r"code prefix \[5,6,7\]: dedup_size=3"):
        await store.add(bare, False, DEDUP_SIZE)


async def test_replicas_placing_at_once_never_share_a_slot(redis_prefix: str) -> None:
    replicas = [RedisCatalog(REDIS_URL, redis_prefix, "v1") for _ in range(4)]

    async def ignore(records):
        return None

    try:
        for replica in replicas:
            await replica.start(bundle_items, ignore)
        batches = await asyncio.gather(
            *(
                replicas[i % 4].add([new_item(f"r{i}-{j}") for j in range(2)], False, DEDUP_SIZE)
                for i in range(CAPACITY // 2)
            )
        )
        got = sorted((p, d) for batch in batches for p, d, _ in slots(batch))
        free = sorted(
            ((a, b, c), d)
            for a in (5, 6)
            for b in (6, 7)
            for c in (7, 8)
            for d in range(2 if (a, b, c) == (5, 6, 8) else 0, DEDUP_SIZE)
        )
        assert got == free  # no slot twice, none left out
    finally:
        for replica in replicas:
            await replica.close()


async def test_redis_that_lost_its_data_refuses_then_reloads_and_reseeds(
    redis_prefix: str,
) -> None:
    held: list[ItemRecord] = []

    async def keep(records):
        held.extend(records)

    store = RedisCatalog(
        REDIS_URL, redis_prefix, "v1", backoff_initial_s=0.05, local_records=lambda: held
    )
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await store.start(bundle_items, keep)
        first = await store.add([new_item(f"n{i}") for i in range(5)], False, DEDUP_SIZE)
        held.extend(o.record for o in first)
        # Redis loses everything without a disconnect (a FLUSHALL, a failover).
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}:*")]
        await client.delete(*keys)
        with pytest.raises(StoreUnavailable, match="dedup bases"):
            await store.add([new_item("n5")], False, DEDUP_SIZE)
        for _ in range(200):  # the supervisor reloads the bundle and its bases, reseeds
            if store.up:
                break
            await asyncio.sleep(0.05)
        assert store.up
        rest = await store.add([new_item(f"n{i}") for i in range(5, 8)], False, DEDUP_SIZE)
        assert slots(first + rest) == FIRST_EIGHT  # no slot handed out twice
    finally:
        await client.aclose()
        await store.close()
