"""FLEXCODE_DENSE_INDEX: the dense head's candidates from the approximate index, end to
end (the tiny bundle is far below the automatic threshold, so "ann" forces it, probing one
list: most requests are served by the widened ask or the exact fallback)."""

from __future__ import annotations

import pytest

from tests.service.conftest import running_app

pytestmark = pytest.mark.anyio

HISTORY = ["item-1", "item-5", "item-9"]


@pytest.mark.parametrize("codec", ["sq8", "pq4fs"])
async def test_the_index_serves_k_items_with_added_items_and_filters(make_settings, codec) -> None:
    settings = make_settings(dense_index="ann", dense_index_nprobe=1, dense_index_codec=codec)
    async with running_app(settings) as (client, _):
        new = [{"item_id": f"fresh-{i}", "title": f"Fresh title {i}"} for i in range(5)]
        assert (await client.post("/items", json={"items": new})).status_code == 200
        r = await client.post("/recommend", json={"history": HISTORY, "k": 10})
        assert r.status_code == 200
        ids = [item["item_id"] for item in r.json()["items"]]
        assert len(ids) == 10 and not set(ids) & set(HISTORY)
        allow = [f"item-{i}" for i in range(20, 26)] + ["fresh-2"]
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 10, "include_items": allow}
        )
        ids = [item["item_id"] for item in r.json()["items"]]
        assert sorted(ids) == sorted(allow)  # all 7 allowed, nothing else
        r = await client.post(
            "/recommend", json={"history": HISTORY, "k": 10, "exclude_items": ids}
        )
        got = [item["item_id"] for item in r.json()["items"]]
        assert len(got) == 10 and not set(got) & (set(ids) | set(HISTORY))


async def test_the_index_is_built_only_when_asked_or_large(make_settings) -> None:
    async with running_app(make_settings()) as (_, app):
        assert app.state.engine._rec.table.dense_index is None  # 60 items: the exact scan
    async with running_app(make_settings(dense_index="ann")) as (_, app):
        assert app.state.engine._rec.table.dense_index is not None
    settings = make_settings(dense_index="ann", dense_index_codec="pq4fs")
    async with running_app(settings) as (_, app):
        index = app.state.engine._rec.table.dense_index
        assert "PQ" in type(index.index).__name__ and index.candidates == 512
