"""Retiring items through real HTTP: DELETE /items/{id} and POST /items/{id}/restore, for
bundle and added items, in embedded mode and on Redis, on one replica and two (the very
next request of the other replica honours it, with no wait), across restarts, a replica
cut off from Redis, and a Redis that lost its data."""

from __future__ import annotations

import pytest

from tests.service.conftest import REDIS_URL, metric_value, running_app
from tests.service.faults import CuttableProxy, RedisServer
from tests.service.test_replication import new_item, wait_for

pytestmark = pytest.mark.anyio

KEY = "retire-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
N_ITEMS = 60  # the session bundle's
HISTORY = ["item-1"]


async def recommended(client, history=HISTORY, k: int = N_ITEMS - 1) -> list[str]:
    """Every item the replica will recommend after `history` (k = all the others)."""
    r = await client.post("/recommend", json={"history": history, "k": k})
    assert r.status_code == 200, r.text
    return [it["item_id"] for it in r.json()["items"]]


async def popular(client, k: int = N_ITEMS) -> list[str]:
    r = await client.post("/recommend", json={"k": k})
    assert r.status_code == 200 and r.json()["fallback"] == "popularity"
    return [it["item_id"] for it in r.json()["items"]]


async def retire(client, item_id: str) -> dict:
    r = await client.delete(f"/items/{item_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


async def restore(client, item_id: str) -> dict:
    r = await client.post(f"/items/{item_id}/restore", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def pick_popular(ranking: list[str]) -> str:
    """A popular item that is not in HISTORY (so the fallback ranks it too)."""
    return next(i for i in ranking if i not in HISTORY)


# --- one replica, embedded --------------------------------------------------------------


async def test_retired_bundle_item_is_never_recommended_but_counts_in_history(
    make_settings,
) -> None:
    settings = make_settings(api_keys=[KEY])
    async with running_app(settings) as (client, _):
        target = pick_popular(await popular(client))
        assert target in await recommended(client)

        body = await retire(client, target)
        assert body["retired"] is True and body["origin"] == "bundle"
        # Every other item still comes back (k of them when k are eligible), this one never:
        # neither from the model nor from the popularity fallback.
        got = await recommended(client, k=N_ITEMS - 2)
        assert target not in got and len(set(got)) == N_ITEMS - 2
        assert target not in await popular(client)
        # Still part of a user's past: known in a history, not a fallback.
        r = await client.post("/recommend", json={"history": [target], "k": 5})
        assert r.json()["unknown_items"] == [] and r.json()["fallback"] is None
        assert target not in [it["item_id"] for it in r.json()["items"]]
        assert (await client.get(f"/items/{target}")).json()["retired"] is True
        # Retiring twice is one retirement.
        await retire(client, target)
        ready = (await client.get("/readyz")).json()
        assert ready["retired_items"] == 1

        body = await restore(client, target)
        assert body["retired"] is False
        assert target in await recommended(client)
        assert target in await popular(client)
        text = (await client.get("/metrics")).text
        assert metric_value(text, "flexcode_items_retired_total") == 1
        assert metric_value(text, "flexcode_items_restored_total") == 1


async def test_added_item_retired_restored_by_adding_it_again(make_settings) -> None:
    settings = make_settings(api_keys=[KEY])
    async with running_app(settings) as (client, _):
        r = await client.post("/items", json={"items": [new_item("fresh")]}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert "fresh" in await recommended(client, k=N_ITEMS)

        assert (await retire(client, "fresh"))["origin"] == "added"
        assert "fresh" not in await recommended(client, k=N_ITEMS)
        # Adding it again (same content: unchanged) restores it.
        r = await client.post("/items", json={"items": [new_item("fresh")]}, headers=AUTH)
        item = r.json()["items"][0]
        assert item["status"] == "unchanged" and item["retired"] is False
        assert "fresh" in await recommended(client, k=N_ITEMS)
        # Retired, then replaced with new content: the new row is retired too, until restored.
        await retire(client, "fresh")
        r = await client.post(
            "/items",
            json={"items": [new_item("fresh", "Renamed")], "replace": True},
            headers=AUTH,
        )
        assert r.json()["items"][0]["status"] == "replaced"
        assert r.json()["items"][0]["retired"] is False  # adding restores
        assert "fresh" in await recommended(client, k=N_ITEMS)


async def test_retire_refusals(make_settings) -> None:
    async with running_app(make_settings(api_keys=[KEY])) as (client, _):
        r = await client.delete("/items/item-3")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await client.post("/items/item-3/restore")
        assert r.status_code == 401
        r = await client.delete("/items/nope", headers=AUTH)
        assert r.status_code == 404 and "nope" in r.json()["detail"]
        r = await client.post("/items/nope/restore", headers=AUTH)
        assert r.status_code == 404
        # Ids with "/" and an id ending in "/restore" reach the right routes.
        r = await client.post(
            "/items", json={"items": [new_item("a/b"), new_item("c/restore")]}, headers=AUTH
        )
        assert r.status_code == 200, r.text
        assert (await retire(client, "a%2Fb"))["item_id"] == "a/b"
        assert (await restore(client, "a/b"))["retired"] is False
        assert (await retire(client, "c/restore"))["item_id"] == "c/restore"
        assert (await client.get("/items/c/restore")).json()["retired"] is True
        # A 405 lists the methods of the path's template (the most specific that fits).
        assert (await client.put("/items/item-3")).headers["allow"] == "DELETE, GET"
        assert (await client.put("/items/item-3/restore")).headers["allow"] == "POST"


async def test_retirement_survives_a_restart_embedded(make_settings) -> None:
    settings = make_settings()
    async with running_app(settings) as (client, _):
        await client.post("/items", json={"items": [new_item("kept")]})
        await retire(client, "item-7")
        await retire(client, "kept")
    async with running_app(settings) as (client, _):
        got = await recommended(client, k=N_ITEMS)
        assert "item-7" not in got and "kept" not in got
        assert (await client.get("/items/kept")).json()["retired"] is True


async def test_two_embedded_replicas_honour_a_delete_on_the_next_request(make_settings) -> None:
    """Two instances on one journal (uvicorn workers on a node): no waiting for the poll."""
    settings = make_settings()
    async with running_app(settings) as (a, _), running_app(settings) as (b, _):
        target = pick_popular(await popular(b))
        assert target in await recommended(b)
        await retire(a, target)
        assert target not in await recommended(b)  # at once
        assert target not in await popular(b)
        await restore(b, target)
        assert target in await recommended(a)


# --- Redis --------------------------------------------------------------------------------


async def test_two_redis_replicas_honour_a_delete_on_the_next_request(
    make_settings, redis_prefix
) -> None:
    settings = make_settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    async with running_app(settings) as (a, _), running_app(settings) as (b, b_app):
        r = await a.post("/items", json={"items": [new_item("added-on-a")]})
        assert r.status_code == 200, r.text
        await wait_for(lambda: "added-on-a" in {r.id for r in b_app.state.engine.added_records()})

        for target in ("item-2", "added-on-a"):
            assert target in await recommended(b, k=N_ITEMS)
            await retire(a, target)
            assert target not in await recommended(b, k=N_ITEMS)  # the very next request
        assert "item-2" not in await popular(b)
        # History still resolves on both replicas.
        for client in (a, b):
            r = await client.post("/recommend", json={"history": ["item-2", "added-on-a"]})
            assert r.json()["unknown_items"] == []

        await restore(b, "item-2")
        assert "item-2" in await recommended(a, k=N_ITEMS)

    # A restarted replica reads them back from Redis.
    async with running_app(settings) as (c, _):
        got = await recommended(c, k=N_ITEMS)
        assert "added-on-a" not in got and "item-2" in got
        assert (await c.get("/readyz")).json()["retired_items"] == 1


async def test_cut_off_replica_learns_retirements_on_reconnect(make_settings, redis_prefix) -> None:
    proxy = CuttableProxy(6379)
    await proxy.start()
    direct = make_settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    proxied = make_settings(redis_url=proxy.url, redis_prefix=redis_prefix)
    try:
        async with running_app(direct) as (a, _), running_app(proxied) as (b, b_app):
            await proxy.cut()
            await wait_for(lambda: not b_app.state.engine.status().store_up)
            await retire(a, "item-4")
            # Cut off: B serves from what it holds, and cannot store a retirement.
            assert "item-4" in await recommended(b, k=N_ITEMS)
            r = await b.delete("/items/item-5")
            assert r.status_code == 503 and r.headers["retry-after"]
            await proxy.restore()
            await wait_for(lambda: b_app.state.engine.status().store_up)
            assert "item-4" not in await recommended(b, k=N_ITEMS)
    finally:
        await proxy.close()


async def test_retirements_written_back_after_redis_lost_them(make_settings, tmp_path) -> None:
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    try:
        settings = make_settings(redis_url=server.url, redis_prefix="lost")
        async with running_app(settings) as (a, _):
            await retire(a, "item-6")
            state_key = "lost:{retired}:state"
            server.kill()
            server.start()  # empty
            client = server.client()
            try:
                await wait_for(lambda: client.hexists(state_key, "item-6"))
            finally:
                client.close()
            assert "item-6" not in await recommended(a, k=N_ITEMS)
        async with running_app(settings) as (fresh, _):
            assert "item-6" not in await recommended(fresh, k=N_ITEMS)
    finally:
        server.kill()
