"""Replication that cannot silently lose items: replicas cut off from Redis catch up,
Redis losing its data gets it written back, a replica that fell behind a trimmed stream
resynchronises, and embedded-mode processes sharing one journal see each other's items.

Every Redis test uses a unique key prefix (deleted afterwards) or a private redis-server
(killed afterwards)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from service.catalog import ItemRecord, LocalCatalog, RedisCatalog
from tests.service.conftest import REDIS_URL, metric_value, running_app
from tests.service.faults import CuttableProxy, RedisServer

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


async def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05) -> None:
    """Until predicate() (a bool, or an awaitable of one) is true."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def new_item(item_id: str, title: str | None = None) -> dict:
    return {"item_id": item_id, "title": title or f"Thing called {item_id}", "categories": ["Toys"]}


def record(item_id: str, prefix=(5, 6, 7), content: str = "a") -> ItemRecord:
    return ItemRecord(
        id=item_id, hash=content, prefix=prefix, base=0, cf=(1, 2, 3, 4), sem=(4, 3, 2, 1),
        alpha=0.25, n_cf=1,
    )  # fmt: skip


def no_bundle():
    return iter([("item-1", '{"o":"b","t":[1,2,3,4]}')])


class Collector:
    """An on_records callback that keeps the newest record per id, and can be held shut
    (a replica busy or paused: its tail waits in the callback)."""

    def __init__(self) -> None:
        self.records: dict[str, ItemRecord] = {}
        self.open = asyncio.Event()
        self.open.set()
        self.calls = 0

    async def __call__(self, records: list[ItemRecord]) -> int:
        self.calls += 1
        await self.open.wait()
        changed = 0
        for rec in records:
            held = self.records.get(rec.id)
            if held is None or rec.seq > held.seq:
                self.records[rec.id] = rec
                changed += 1
        return changed


async def tokens_by_id(client, ids) -> dict[str, list[int]]:
    out = {}
    for item_id in ids:
        r = await client.get(f"/items/{item_id}")
        assert r.status_code == 200, r.text
        out[item_id] = r.json()["tokens"]
    return out


async def added_items(client) -> int:
    return (await client.get("/readyz")).json()["added_items"]


async def has_added(client, n: int) -> bool:
    return await added_items(client) == n


async def status(client) -> str:
    return (await client.get("/readyz")).json()["status"]


async def status_is(client, expected: str) -> bool:
    return await status(client) == expected


@pytest.fixture
def volatile_redis(tmp_path: Path):
    """A private redis-server without persistence: killed and restarted, it is empty."""
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    yield server
    server.kill()


# --- (a) a replica cut off from Redis catches up ------------------------------------------


async def test_cut_off_replica_catches_up_on_reconnect(make_settings, redis_prefix) -> None:
    proxy = CuttableProxy(6379)
    await proxy.start()
    direct = make_settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    proxied = make_settings(redis_url=proxy.url, redis_prefix=redis_prefix)
    try:
        async with running_app(direct) as (a, _), running_app(proxied) as (b, _):
            first = await a.post("/items", json={"items": [new_item("early")]})
            assert first.status_code == 200, first.text

            await wait_for(lambda: has_added(b, 1))
            await proxy.cut()
            await wait_for(lambda: status_is(b, "degraded"))
            # While B is cut off: new items, and a replace of one B already holds.
            late = [new_item(f"late-{i}") for i in range(5)]
            r = await a.post("/items", json={"items": late})
            assert r.status_code == 200, r.text
            r = await a.post(
                "/items", json={"items": [new_item("early", "Renamed")], "replace": True}
            )
            assert r.json()["items"][0]["status"] == "replaced"
            ids = ["early"] + [it["item_id"] for it in late]
            expected = await tokens_by_id(a, ids)

            await proxy.restore()
            await wait_for(lambda: has_added(b, 6))  # from the added hash on reconnect
            # The catch-up applies the records before the store reports itself up: the
            # status follows within the reconnect, not necessarily by the same await.
            await wait_for(lambda: status_is(b, "ready"))
            r = await b.post("/recommend", json={"history": ids, "k": 3})
            assert r.json()["unknown_items"] == []
            assert await tokens_by_id(b, ids) == expected  # the replace too
            text = (await b.get("/metrics")).text
            assert metric_value(text, "flexcode_catalog_resyncs_total") == 0  # not a gap
    finally:
        await proxy.close()


# --- (b) Redis loses its data: the replicas write it back ---------------------------------


async def test_reseed_after_redis_lost_its_data(make_settings, volatile_redis) -> None:
    settings = make_settings(redis_url=volatile_redis.url, redis_prefix="reseed")
    ids = [f"kept-{i}" for i in range(4)]
    async with running_app(settings) as (a, a_app):
        added_key = f"reseed:{{{a_app.state.engine.version}}}:added"
        r = await a.post("/items", json={"items": [new_item(i, "Twin") for i in ids]})
        assert r.status_code == 200, r.text
        expected = await tokens_by_id(a, ids)

        volatile_redis.kill()
        volatile_redis.start()  # empty: no AOF, no snapshot
        client = volatile_redis.client()
        try:
            assert client.dbsize() == 0

            await wait_for(lambda: status_is(a, "ready"))
            await wait_for(lambda: client.hlen(added_key) == len(ids))
        finally:
            client.close()

    # A fresh replica knows nothing but what Redis holds now.
    async with running_app(settings) as (c, _):
        assert await added_items(c) == len(ids)
        assert await tokens_by_id(c, ids) == expected
        # The counters were put back ahead of the restored items: a new item with the same
        # code prefix gets a token row of its own.
        r = await c.post("/items", json={"items": [new_item("after", "Twin")]})
        assert r.status_code == 200, r.text
        tokens = r.json()["items"][0]["tokens"]
        assert tokens[:-1] == expected[ids[0]][:-1]
        assert tokens not in expected.values()


# --- (c) a replica far behind a trimmed stream resynchronises -----------------------------


def _stream_oldest(key: str) -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return client.xinfo_stream(key)["first-entry"][0].decode()
    finally:
        client.close()


def _stream_newest(key: str) -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return client.xinfo_stream(key)["last-entry"][0].decode()
    finally:
        client.close()


def _id(entry_id: str) -> tuple[int, int]:
    ms, n = entry_id.split("-")
    return int(ms), int(n)


async def test_replica_behind_trimmed_stream_resyncs(redis_prefix, caplog) -> None:
    writer = RedisCatalog(REDIS_URL, redis_prefix, "v1", stream_maxlen=5)
    reader = RedisCatalog(REDIS_URL, redis_prefix, "v1", stream_maxlen=5)
    resyncs: list[None] = []
    seen = Collector()

    async def ignore(records):
        return None

    try:
        await writer.start(no_bundle, ignore)
        await reader.start(no_bundle, seen, on_resync=lambda: resyncs.append(None))
        seen.open.clear()  # the reader's next delivery blocks: it falls behind
        await writer.add([record("first")], False, 10_000)
        await wait_for(lambda: seen.calls == 1)
        cursor = reader._cursor
        for batch in range(30):
            await writer.add([record(f"n{batch}-{i}") for i in range(10)], False, 10_000)
        events = writer.keys["events"]
        assert _id(_stream_oldest(events)) > _id(cursor)  # entries it never read are gone

        with caplog.at_level(logging.WARNING, logger="service.catalog"):
            seen.open.set()
            await wait_for(lambda: len(seen.records) == 301)
        assert len(resyncs) == 1
        assert any("trimmed past" in r.getMessage() for r in caplog.records)
        # Back to tailing: a later item arrives through the stream, with no new resync.
        await writer.add([record("later")], False, 10_000)
        await wait_for(lambda: "later" in seen.records)
        assert len(resyncs) == 1
    finally:
        await writer.close()
        await reader.close()


async def test_replica_keeping_up_never_resyncs(redis_prefix) -> None:
    """The stream is trimmed far past its start, but never past what the reader has read
    (nor before its first read of a stream that did not exist at its start): no resync."""
    writer = RedisCatalog(REDIS_URL, redis_prefix, "v1", stream_maxlen=5)
    reader = RedisCatalog(REDIS_URL, redis_prefix, "v1", stream_maxlen=5)
    resyncs: list[None] = []
    seen = Collector()

    async def ignore(records):
        return None

    try:
        await writer.start(no_bundle, ignore)
        await reader.start(no_bundle, seen, on_resync=lambda: resyncs.append(None))
        for i in range(60):
            await writer.add([record(f"k{i}")], False, 10_000)
            await wait_for(lambda i=i: f"k{i}" in seen.records)
        client = redis.Redis.from_url(REDIS_URL)
        info = client.xinfo_stream(writer.keys["events"])
        client.close()
        assert info["entries-added"] > info["length"]  # it was trimmed
        assert resyncs == []
    finally:
        await writer.close()
        await reader.close()


async def test_resync_through_the_service_counts_and_serves_everything(
    make_settings, redis_prefix, monkeypatch
) -> None:
    """Two service replicas on a stream kept to about 30 entries; B's inference thread is
    held (a replica paused or busy) while A adds 100 items, 20 per request: B
    resynchronises, serves all of them and counts the resync in
    flexcode_catalog_resyncs_total. A, never more than one request behind, does not."""
    import service.app

    monkeypatch.setattr(
        service.app, "RedisCatalog", functools.partial(RedisCatalog, stream_maxlen=30)
    )
    settings = make_settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    async with running_app(settings) as (a, a_app), running_app(settings) as (b, b_app):
        held = threading.Event()
        engine = b_app.state.engine
        # White-box: B's store keys and cursor, and its one inference thread (held busy).
        store = engine._store
        events = store.keys["events"]
        engine._executor.submit(held.wait, 60)  # B's one inference thread is busy
        try:
            r = await a.post("/items", json={"items": [new_item("first")]})
            assert r.status_code == 200, r.text
            # B's tail has read it and now waits for the inference thread to apply it.
            await wait_for(lambda: store._cursor != "0-0")
            cursor = store._cursor
            for batch in range(5):
                items = [new_item(f"bulk-{batch}-{i}") for i in range(20)]
                r = await a.post("/items", json={"items": items})
                assert r.status_code == 200, r.text
                # A keeps up (on a busy machine its tail could lag two requests behind).
                await wait_for(lambda: a_app.state.engine._store._cursor == _stream_newest(events))
            assert _id(_stream_oldest(events)) > _id(cursor)
        finally:
            held.set()

        await wait_for(lambda: has_added(b, 101))
        ids = ["first"] + [f"bulk-{b_}-{i}" for b_ in range(5) for i in range(20)]
        assert await tokens_by_id(b, ids) == await tokens_by_id(a, ids)
        assert metric_value((await b.get("/metrics")).text, "flexcode_catalog_resyncs_total") == 1
        assert metric_value((await a.get("/metrics")).text, "flexcode_catalog_resyncs_total") == 0


# --- (d) embedded mode: processes sharing one journal -------------------------------------

_OTHER_PROCESS = """
import asyncio, sys
from service.catalog import ItemRecord, LocalCatalog

async def main():
    store = LocalCatalog(sys.argv[1], "v1", poll_s=0)
    async def ignore(records):
        return None
    await store.start(lambda: iter(()), ignore)
    recs = [ItemRecord(id=f"proc-{i}", hash="a", prefix=(5, 6, 7), base=0, cf=(1,),
                       sem=(2,), alpha=0.5, n_cf=1) for i in range(3)]
    out = await store.add(recs, False, 10_000)
    print(",".join(str(o.record.dedup) for o in out))
    await store.close()

asyncio.run(main())
"""


async def test_embedded_journal_shared_by_instances_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    one, two = LocalCatalog(path, "v1", poll_s=0.05), LocalCatalog(path, "v1", poll_s=0.05)
    seen_one, seen_two = Collector(), Collector()
    try:
        await one.start(no_bundle, seen_one)
        await two.start(no_bundle, seen_two)
        a = await one.add([record("from-one")], False, 10_000)
        await wait_for(lambda: "from-one" in seen_two.records)
        b = await two.add([record("from-two")], False, 10_000)  # same code prefix
        await wait_for(lambda: "from-two" in seen_one.records)
        assert {a[0].record.dedup, b[0].record.dedup} == {0, 1}  # one counter, shared

        # Another process on the node writes to the same file.
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _OTHER_PROCESS, str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["2,3,4"]

        # Colliding adds from both instances at once: every one gets its own dedup id.
        adds = [
            (one if i % 2 else two).add([record(f"race-{i}")], False, 10_000) for i in range(10)
        ]
        raced = [o[0].record.dedup for o in await asyncio.gather(*adds)]
        assert sorted(raced) == list(range(5, 15))

        everything = {"from-one", "from-two"} | {f"proc-{i}" for i in range(3)}
        everything |= {f"race-{i}" for i in range(10)}

        async def both_see_all() -> bool:
            return set(seen_one.records) == set(seen_two.records) == everything

        await wait_for(both_see_all)
        assert seen_one.records == seen_two.records  # the same assignments
    finally:
        await one.close()
        await two.close()


async def test_embedded_replicas_serve_each_others_items(make_settings) -> None:
    """Two service instances on one journal (uvicorn workers on a node): an item added on
    one becomes recommendable on the other through the poll."""
    settings = make_settings()
    async with running_app(settings) as (a, _), running_app(settings) as (b, _):
        r = await a.post("/items", json={"items": [new_item("shared")]})
        assert r.status_code == 200, r.text

        async def b_knows() -> bool:
            r = await b.post("/recommend", json={"history": ["shared"], "k": 2})
            return r.json()["unknown_items"] == []

        await wait_for(b_knows)
        assert await tokens_by_id(b, ["shared"]) == await tokens_by_id(a, ["shared"])
