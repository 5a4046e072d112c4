"""Per-user histories through real HTTP: POST /events stores them, /recommend with a
user_id reads them (the same answer as sending that history), unknown items are kept and
listed, the bound per user holds, DELETE /users/{id} forgets a user; embedded and Redis."""

from __future__ import annotations

import pytest

from tests.service.conftest import REDIS_URL, metric_value, running_app
from tests.service.test_replication import new_item

pytestmark = pytest.mark.anyio

KEY = "events-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
# (item, time): sent out of order below; the stored history is ordered by time.
EVENTS = [("item-3", 1_700_000_030.5), ("item-9", 1_700_000_010), ("item-14", 1_700_000_020)]
IN_TIME_ORDER = ["item-9", "item-14", "item-3"]


def events(user_id: str, pairs) -> dict:
    return {"events": [{"user_id": user_id, "item_id": i, "timestamp": t} for i, t in pairs]}


async def post_events(client, body: dict) -> dict:
    r = await client.post("/events", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


async def recommend(client, **body) -> dict:
    r = await client.post("/recommend", json={"k": 8, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def check_user_history_is_the_history(a, b) -> None:
    """Events posted on replica a; /recommend on replica b (a itself in embedded mode)."""
    body = await post_events(a, events("alice", [*EVENTS, ("not-yet-added", 1_700_000_040)]))
    assert body == {"recorded": 4, "unknown_items": ["not-yet-added"]}

    by_user = await recommend(b, user_id="alice")
    by_history = await recommend(b, history=[*IN_TIME_ORDER, "not-yet-added"])
    assert by_user == by_history
    assert by_user["unknown_items"] == ["not-yet-added"] and by_user["fallback"] is None
    # Explicit history items come after the stored ones, as the most recent.
    both = await recommend(b, user_id="alice", history=["item-21"])
    assert both == await recommend(b, history=[*IN_TIME_ORDER, "not-yet-added", "item-21"])
    # No events: the popularity ranking.
    assert (await recommend(b, user_id="nobody"))["fallback"] == "popularity"
    # The unknown item, once added, counts.
    r = await a.post("/items", json={"items": [new_item("not-yet-added")]}, headers=AUTH)
    assert r.status_code == 200, r.text


async def test_user_id_recommendations_equal_history_recommendations_embedded(
    make_settings,
) -> None:
    async with running_app(make_settings(api_keys=[KEY])) as (client, _):
        await check_user_history_is_the_history(client, client)
        assert (await recommend(client, user_id="alice"))["unknown_items"] == []
        text = (await client.get("/metrics")).text
        assert metric_value(text, "flexcode_events_recorded_total") == 4
        assert metric_value(text, "flexcode_events_unknown_items_total") == 1


async def test_user_id_recommendations_equal_history_recommendations_redis(
    make_settings, redis_prefix
) -> None:
    settings = make_settings(api_keys=[KEY], redis_url=REDIS_URL, redis_prefix=redis_prefix)
    async with running_app(settings) as (a, _), running_app(settings) as (b, _):
        await check_user_history_is_the_history(a, b)
    # Stored in Redis: a restarted replica reads the same history.
    async with running_app(settings) as (c, _):
        assert await recommend(c, user_id="alice") == await recommend(
            c, history=[*IN_TIME_ORDER, "not-yet-added"]
        )


@pytest.mark.parametrize("mode", ["embedded", "redis"])
async def test_bound_retries_and_forgetting(make_settings, redis_prefix, mode) -> None:
    store = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix} if mode == "redis" else {}
    settings = make_settings(api_keys=[KEY], user_history_max=5, **store)
    async with running_app(settings) as (client, _):
        pairs = [(f"item-{i}", 1_700_000_000 + i) for i in range(1, 9)]
        await post_events(client, events("bob", pairs[:4]))
        await post_events(client, events("bob", pairs[:4]))  # a retry: no new events
        await post_events(client, events("bob", pairs[4:]))
        # The newest 5 of the 8 distinct events are kept.
        kept = [i for i, _ in pairs[-5:]]
        assert await recommend(client, user_id="bob") == await recommend(client, history=kept)
        await post_events(client, events("carol", pairs[:2]))

        r = await client.delete("/users/bob", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"user_id": "bob", "events_deleted": 5}
        assert (await recommend(client, user_id="bob"))["fallback"] == "popularity"
        r = await client.delete("/users/bob", headers=AUTH)
        assert r.json()["events_deleted"] == 0
        # Other users keep theirs.
        assert await recommend(client, user_id="carol") == await recommend(
            client, history=["item-1", "item-2"]
        )


async def test_event_refusals(make_settings) -> None:
    settings = make_settings(api_keys=[KEY], max_events_per_request=3)
    async with running_app(settings) as (client, _):
        one = events("dave", [("item-1", 1_700_000_000)])
        assert (await client.post("/events", json=one)).status_code == 401
        assert (await client.delete("/users/dave")).status_code == 401
        too_many = events("dave", [(f"item-{i}", 1_700_000_000 + i) for i in range(1, 5)])
        r = await client.post("/events", json=too_many, headers=AUTH)
        assert r.status_code == 422 and "at most 3" in r.json()["detail"]
        millis = events("dave", [("item-1", 1_700_000_000_000)])
        r = await client.post("/events", json=millis, headers=AUTH)
        assert r.status_code == 422 and "timestamp" in r.json()["detail"]
        bad_user = {"events": [{"user_id": " padded", "item_id": "item-1"}]}
        r = await client.post("/events", json=bad_user, headers=AUTH)
        assert r.status_code == 422 and "user ids" in r.json()["detail"]
        r = await client.post("/events", json={"events": []}, headers=AUTH)
        assert r.status_code == 422
        # No timestamp: the time of receipt.
        r = await client.post(
            "/events", json={"events": [{"user_id": "dave", "item_id": "item-2"}]}, headers=AUTH
        )
        assert r.status_code == 200
        assert await recommend(client, user_id="dave") == await recommend(
            client, history=["item-2"]
        )
