"""Business-rule filters on POST /recommend through real HTTP: allowlist, denylist,
category and freshness filters, still k results, the popularity fallback filtered too,
and bad filters refused with a 422 that says what is wrong. The tiny bundle's item i has
the categories "cat-<i mod 4>" and, for multiples of 5, "Comedy" (tests/bundle_factory)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from tests.service.conftest import REDIS_URL, running_app

pytestmark = pytest.mark.anyio

HISTORY = ["item-1", "item-5", "item-7"]


def ids_of(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [it["item_id"] for it in response.json()["items"]]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


async def test_allowlist_and_denylist_still_give_k(make_settings) -> None:
    allow = [f"item-{i}" for i in range(20, 41)]  # 21 items, none in the history
    async with running_app(make_settings()) as (client, _):
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 8, "include_items": allow}
        )
        got = ids_of(r)
        assert len(got) == 8 and set(got) <= set(allow)
        assert r.json()["unknown_include_items"] == []
        # A tiny beam: the allowed prefixes are what it explores, and the dense head fills k.
        r = await client.post(
            "/recommend",
            json={"history": HISTORY, "k": 8, "include_items": allow, "beam_width": 1},
        )
        assert len(ids_of(r)) == 8 and set(ids_of(r)) <= set(allow)
        # Denylist: the unfiltered top 10 denied, 10 others come back.
        top = ids_of(await client.post("/recommend", json={"history": HISTORY, "k": 10}))
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 10, "exclude_items": top}
        )
        got = ids_of(r)
        assert len(got) == 10 and not set(got) & (set(top) | set(HISTORY))
        # Both at once: allowed minus denied.
        r = await client.post(
            "/recommend",
            json={"history": HISTORY, "k": 30, "include_items": allow, "exclude_items": allow[:5]},
        )
        assert sorted(ids_of(r)) == sorted(allow[5:])


async def test_allowlist_smaller_than_k_returns_all_of_it(make_settings) -> None:
    allow = ["item-2", "item-3", "item-1", "ghost-1", "item-44"]  # item-1: in the history
    async with running_app(make_settings()) as (client, _):
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 10, "include_items": allow}
        )
        assert sorted(ids_of(r)) == ["item-2", "item-3", "item-44"]
        assert r.json()["unknown_include_items"] == ["ghost-1"]
        scores = [it["score"] for it in r.json()["items"]]
        assert scores == sorted(scores, reverse=True)
        # Nothing known to allow: nothing returned (not the unfiltered ranking).
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 5, "include_items": ["ghost-2"]}
        )
        assert ids_of(r) == [] and r.json()["unknown_include_items"] == ["ghost-2"]


async def test_category_filter(make_settings) -> None:
    comedies = {f"item-{i}" for i in range(5, 61, 5)}  # 12 items
    async with running_app(make_settings()) as (client, _):
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 20, "filter": {"categories": ["comedy"]}}
        )
        assert set(ids_of(r)) == comedies - set(HISTORY)  # 11: every eligible comedy
        # Any of several; combined with a denylist; k still met.
        r = await client.post(
            "/recommend",
            json={
                "history": HISTORY,
                "k": 10,
                "exclude_items": ["item-4", "item-8"],
                "filter": {"categories": ["cat-0", "Comedy"]},
            },
        )
        got = ids_of(r)
        allowed = {f"item-{i}" for i in range(1, 61) if i % 4 == 0 or i % 5 == 0}
        assert len(got) == 10 and set(got) <= allowed - {"item-4", "item-8", *HISTORY}
        # A category no item has: nothing, not an error.
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 5, "filter": {"categories": ["Opera"]}}
        )
        assert ids_of(r) == []


async def test_popularity_fallback_is_filtered_too(make_settings) -> None:
    async with running_app(make_settings()) as (client, _):
        r = await client.post("/recommend", json={"k": 4, "filter": {"categories": ["cat-3"]}})
        assert r.json()["fallback"] == "popularity"
        got = ids_of(r)
        assert len(got) == 4 and all(int(i.split("-")[1]) % 4 == 3 for i in got)
        r = await client.post(
            "/recommend", json={"history": ["ghost"], "k": 5, "include_items": ["item-9", "item-3"]}
        )
        assert sorted(ids_of(r)) == ["item-3", "item-9"]


async def add_fresh_items(client, categories: list) -> tuple[float, list[str]]:
    """POST /items with one new item per categories entry; (a time between the bundle's
    creation and the additions, the new ids)."""
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    cutoff = time.time() - 0.001
    new = [
        {"item_id": f"fresh-{i}", "title": f"Fresh thing number {i}", "categories": cats}
        for i, cats in enumerate(categories)
    ]
    r = await client.post("/items", json={"items": new})
    assert r.status_code == 200, r.text
    return cutoff, [it["item_id"] for it in new]


async def _freshness(client, app) -> None:
    bundle_created = app.state.engine._rec.attributes.added_at[1]  # white-box: its time
    if bundle_created >= time.time() - 1.0:  # the session bundle may be a second old
        await asyncio.sleep(1.0)
    cutoff, fresh = await add_fresh_items(client, [["Comedy", "Space"], "Space, Drama", None])
    assert cutoff > bundle_created
    r = await client.post(
        "/recommend", json={"history": HISTORY, "k": 10, "filter": {"added_after": iso(cutoff)}}
    )
    assert sorted(ids_of(r)) == fresh  # only the new items: fewer than k exist
    fresh_space = {"added_after": iso(cutoff), "categories": ["space"]}
    r = await client.post("/recommend", json={"history": HISTORY, "k": 10, "filter": fresh_space})
    assert sorted(ids_of(r)) == fresh[:2]
    r = await client.post(
        "/recommend", json={"history": HISTORY, "k": 10, "filter": {"added_before": iso(cutoff)}}
    )
    got = ids_of(r)
    assert len(got) == 10 and not set(got) & set(fresh)
    # Bundle items count as added at the bundle's creation: a window around it has them all.
    window = {"added_after": iso(bundle_created - 1), "added_before": iso(bundle_created + 0.5)}
    r = await client.post("/recommend", json={"history": HISTORY, "k": 57, "filter": window})
    assert len(ids_of(r)) == 57 and all(i.startswith("item-") for i in ids_of(r))
    # The Comedy filter now also finds the new comedy.
    r = await client.post(
        "/recommend", json={"history": HISTORY, "k": 20, "filter": {"categories": ["Comedy"]}}
    )
    assert "fresh-0" in ids_of(r) and len(ids_of(r)) == 12


async def test_item_view_shows_categories(make_settings) -> None:
    """GET /items/{id} shows what filter.categories matches: a bundle item's categories
    from the dataset, an added item's from POST /items (names the catalog has keep its
    spelling), none for an item without any; DELETE shows them too."""
    async with running_app(make_settings()) as (client, _):
        r = await client.get("/items/item-5")
        assert r.status_code == 200, r.text
        assert r.json()["categories"] == ["cat-1", "Comedy"]
        assert (await client.get("/items/item-6")).json()["categories"] == ["cat-2"]
        _, fresh = await add_fresh_items(client, ["space, comedy", None])
        assert (await client.get(f"/items/{fresh[0]}")).json()["categories"] == [
            "space",
            "Comedy",
        ]
        assert (await client.get(f"/items/{fresh[1]}")).json()["categories"] == []
        r = await client.delete("/items/item-5")
        assert r.status_code == 200 and r.json()["categories"] == ["cat-1", "Comedy"]


async def test_freshness_filter_with_added_items(make_settings) -> None:
    async with running_app(make_settings()) as (client, app):
        await _freshness(client, app)


async def test_freshness_and_categories_through_redis(make_settings, redis_prefix) -> None:
    """Added items' categories and times are stored in Redis and replicated: a second
    replica and a restarted one filter by them too."""
    settings = make_settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    async with running_app(settings) as (a, app), running_app(settings) as (b, _):
        await _freshness(a, app)

        async def b_filters() -> list[str]:
            r = await b.post(
                "/recommend",
                json={"history": HISTORY, "k": 5, "filter": {"categories": ["Space"]}},
            )
            return ids_of(r)

        for _ in range(200):  # through the replication stream
            if len(await b_filters()) == 2:
                break
            await asyncio.sleep(0.02)
        assert sorted(await b_filters()) == ["fresh-0", "fresh-1"]
    async with running_app(settings) as (client, _):
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 5, "filter": {"categories": ["drama"]}}
        )
        assert ids_of(r) == ["fresh-1"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"filter": {"color": ["red"]}}, "unknown filter attribute 'color'"),
        ({"filter": {"added_after": "yesterday"}}, "'yesterday' is not an ISO-8601 time"),
        ({"filter": {"added_before": "2026-13-01T00:00:00Z"}}, "is not an ISO-8601 time"),
        (
            {"filter": {"added_after": "2026-02-01T00:00:00Z", "added_before": "2026-01-01"}},
            "added_after (2026-02-01T00:00:00Z) is later than added_before",
        ),
        ({"include_items": [f"item-{i}" for i in range(6)]}, "include_items has 6 ids; at most 5"),
        ({"exclude_items": [f"x-{i}" for i in range(7)]}, "exclude_items has 7 ids; at most 5"),
        ({"include_items": [" padded"]}, "item ids have 1 to 256 characters"),
        ({"filter": {"categories": "Comedy"}}, "filter.categories"),
    ],
)
async def test_bad_filters_get_a_422_that_says_why(make_settings, body, says) -> None:
    async with running_app(make_settings(max_filter_items=5)) as (client, _):
        r = await client.post("/recommend", json={"history": HISTORY, **body})
        assert r.status_code == 422, r.text
        assert says in r.json()["detail"]


async def test_openapi_states_the_filter_bounds(make_settings) -> None:
    async with running_app(make_settings(max_filter_items=7)) as (client, _):
        doc = (await client.get("/openapi.json")).json()
        props = doc["components"]["schemas"]["RecommendRequest"]["properties"]
        for name in ("include_items", "exclude_items"):
            arrays = [b for b in props[name]["anyOf"] if b.get("type") == "array"]
            assert arrays[0]["maxItems"] == 7
        item_filter = doc["components"]["schemas"]["ItemFilter"]
        assert item_filter["additionalProperties"] is False
        assert item_filter["properties"]["added_after"]["anyOf"][0]["format"] == "date-time"


async def test_a_batch_of_mixed_filters_answers_each_request_as_alone(
    make_settings, monkeypatch
) -> None:
    """Short allowlists reach the decoder as row lists, other filters as row masks
    (`filter_form`): one micro-batch mixing them (an allowlist narrowed by a category,
    an allowlist too long for a list, a category, none) gives each request what it gets
    alone, and the allowlists only rows they allow."""
    from models.item_attributes import RowFilter
    from service import recommender as rec_module
    from service.recommender import RecQuery, filter_form

    monkeypatch.setattr(rec_module, "SPARSE_ALLOWED_MAX", 8)
    async with running_app(make_settings()) as (_, app):
        rec = app.state.engine._rec
        history = rec.resolve(HISTORY)
        rules = [
            RowFilter(include_rows=np.array([2, 3, 4, 8, 12, 16, 20]), categories=("cat-0",)),
            RowFilter(include_rows=np.arange(10, 40)),
            RowFilter(categories=("Comedy",)),
            None,
            RowFilter(include_rows=np.array([30, 31, 9])),
        ]
        assert [filter_form(r) for r in rules] == ["list", "mask", "mask", "none", "list"]
        queries = [RecQuery(history, history, 5, 4, rule) for rule in rules]
        together = rec.recommend_batch(queries)
        for query, got in zip(queries, together, strict=True):
            alone = rec.recommend_batch([query])[0]
            assert got.item_ids == alone.item_ids
            np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-5)
        want = ["item-12", "item-16", "item-20", "item-4", "item-8"]  # cat-0: rows 4k
        assert sorted(together[0].item_ids) == want
        assert sorted(together[4].item_ids) == ["item-30", "item-31", "item-9"]


async def test_a_denylist_alone_is_more_exclusions_not_a_row_mask(make_settings) -> None:
    """A request whose only rule is a denylist reaches the decoder as exclusions (no
    catalogue-sized mask is built): the denied items never come back, k still do, the
    ranking of the rest is the unfiltered one, and the popularity fallback obeys it."""
    async with running_app(make_settings()) as (client, app):
        rec = app.state.engine._rec

        def no_masks(*_args, **_kwargs):
            raise AssertionError("a denylist alone built a row mask")

        rec.allowed_rows = no_masks
        top = ids_of(await client.post("/recommend", json={"history": HISTORY, "k": 20}))
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 10, "exclude_items": top[:5]}
        )
        assert ids_of(r) == top[5:15]
        r = await client.post(
            "/recommend", json={"history": ["ghost"], "k": 5, "exclude_items": ["item-1"]}
        )
        assert r.json()["fallback"] == "popularity"
        assert len(ids_of(r)) == 5 and "item-1" not in ids_of(r)
