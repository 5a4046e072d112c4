"""FLEXCODE_NEW_ITEM_SHARE: the exposure knob for items without an id, end to end."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.service.conftest import running_app

pytestmark = pytest.mark.anyio

HISTORY = ["item-1", "item-5", "item-9"]


async def _new_items_recommended(settings: Settings) -> int:
    """Add 5 new items, then count them in the top 10 of one request."""
    async with running_app(settings) as (client, _):
        new = [{"item_id": f"fresh-{i}", "title": f"Fresh title {i}"} for i in range(5)]
        assert (await client.post("/items", json={"items": new})).status_code == 200
        r = await client.post("/recommend", json={"history": HISTORY, "k": 10})
        assert r.status_code == 200
        ids = [item["item_id"] for item in r.json()["items"]]
        assert len(ids) == 10
        return sum(item_id.startswith("fresh-") for item_id in ids)


async def test_a_large_share_brings_new_items_into_the_list(make_settings) -> None:
    # 0.99 of the dense mass on the 5 new items, shared between them by their scores, so
    # a new item the model scores far below the others can still trail bundle items; but
    # the knob must bring in more of them than the model as trained shows.
    as_trained = await _new_items_recommended(make_settings())
    shared = await _new_items_recommended(make_settings(new_item_share=0.99))
    assert shared > as_trained


def test_new_item_share_must_lie_strictly_between_0_and_1() -> None:
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValidationError):
            Settings(new_item_share=bad)
    assert Settings().new_item_share is None
