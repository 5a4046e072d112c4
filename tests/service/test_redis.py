"""Redis mode through real HTTP: replicas sharing one Redis, restarts, colliding adds,
and Redis going away mid-run."""

import asyncio
import re
import time

import pytest

from tests.service.conftest import REDIS_URL, running_app

pytestmark = pytest.mark.anyio


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def new_item(item_id: str, title: str = "A brand new thing") -> dict:
    return {"item_id": item_id, "title": title, "categories": ["Toys", "Games"]}


async def test_two_replicas_see_each_others_items(make_settings, redis_prefix, tmp_path) -> None:
    settings = make_settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    async with running_app(settings) as (a, _), running_app(settings) as (b, _):
        r = await a.post("/items", json={"items": [new_item("from-a")]})
        assert r.status_code == 200, r.text
        tokens = r.json()["items"][0]["tokens"]

        async def b_knows() -> bool:
            r = await b.post("/recommend", json={"history": ["from-a"], "k": 2})
            return r.json()["unknown_items"] == []

        await wait_for(b_knows)  # through the stream, not a lookup
        got = await b.get("/items/from-a")
        assert got.json()["tokens"] == tokens and got.json()["origin"] == "added"
        # The same id with the same content on the other replica: the same assignment.
        same = await b.post("/items", json={"items": [new_item("from-a")]})
        assert same.json()["items"][0]["status"] == "unchanged"
        assert same.json()["items"][0]["tokens"] == tokens
        other = await b.post("/items", json={"items": [new_item("from-a", "Other")]})
        assert other.status_code == 409


async def test_restart_keeps_added_items_redis(make_settings, redis_prefix, tmp_path) -> None:
    settings = make_settings(
        redis_url=REDIS_URL, redis_prefix=redis_prefix, journal_path=tmp_path / "unused.db"
    )
    async with running_app(settings) as (client, _):
        r = await client.post("/items", json={"items": [new_item("durable")]})
        tokens = r.json()["items"][0]["tokens"]
    async with running_app(settings) as (client, _):
        got = await client.get("/items/durable")
        assert got.status_code == 200 and got.json()["tokens"] == tokens
        ready = (await client.get("/readyz")).json()
        assert ready["store"] == {"mode": "redis", "up": True} and ready["added_items"] == 1
    assert not (tmp_path / "unused.db").exists()  # Redis mode writes no local journal


async def test_eight_concurrent_colliding_adds_get_distinct_tokens(
    make_settings, redis_prefix
) -> None:
    settings = make_settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    async with running_app(settings) as (a, _), running_app(settings) as (b, _):
        clients = [a, b]
        posts = [
            clients[i % 2].post("/items", json={"items": [new_item(f"twin-{i}", "Twin")]})
            for i in range(8)
        ]
        results = await asyncio.gather(*posts)
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        rows = [tuple(r.json()["items"][0]["tokens"]) for r in results]
        assert len({row[:-1] for row in rows}) == 1  # one code prefix: they collide
        assert len(set(rows)) == 8  # yet every item has its own token sequence

        async def both_have_all() -> bool:
            for c in clients:
                r = await c.get("/readyz")
                if r.json()["added_items"] != 8:
                    return False
            return True

        await wait_for(both_have_all)


async def test_redis_outage_keeps_serving_and_recovers(make_settings, private_redis) -> None:
    settings = make_settings(redis_url=private_redis.url, redis_prefix="outage")
    async with running_app(settings) as (client, _):
        first = await client.post("/items", json={"items": [new_item("before")]})
        assert first.status_code == 200

        async def redis_up() -> float:
            text = (await client.get("/metrics")).text
            return float(re.search(r"^flexcode_redis_up (\S+)$", text, re.M).group(1))

        assert await redis_up() == 1.0
        private_redis.stop()

        async def degraded() -> bool:
            return (await client.get("/readyz")).json()["status"] == "degraded"

        await wait_for(degraded)
        ready = (await client.get("/readyz")).json()
        assert ready["store"] == {"mode": "redis", "up": False}
        assert await redis_up() == 0.0
        r = await client.post("/recommend", json={"history": ["before", "item-3"], "k": 5})
        assert r.status_code == 200 and r.json()["unknown_items"] == []
        refused = await client.post("/items", json={"items": [new_item("during")]})
        assert refused.status_code == 503 and "redis" in refused.json()["detail"]
        assert (await client.get("/items/before")).status_code == 200

        private_redis.start()

        async def recovered() -> bool:
            return (await client.get("/readyz")).json()["status"] == "ready"

        await wait_for(recovered)
        assert await redis_up() == 1.0
        after = await client.post("/items", json={"items": [new_item("after", "Else")]})
        assert after.status_code == 200
        assert (await client.get("/items/before")).status_code == 200


async def test_redis_unreachable_at_start_up_serves_bundle(make_settings) -> None:
    from tests.service.conftest import free_port

    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_app(settings) as (client, _):
        assert (await client.get("/readyz")).json()["status"] == "degraded"
        r = await client.post("/recommend", json={"history": ["item-1"], "k": 3})
        assert r.status_code == 200
        assert (await client.post("/items", json={"items": [new_item("x")]})).status_code == 503
