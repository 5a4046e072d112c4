"""Item ids: the rule (service.schemas.ITEM_ID_RULE) and what it promises. Every id POST
/items accepts is retrievable through GET /items/{item_id}, percent-encoded as one path
segment, and recommendable; an id outside the rule gets a 422 that states it, wherever it
is sent; the ids of the training data all pass."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from service.schemas import ITEM_ID_RULE, check_item_id
from tests.service.conftest import running_app

pytestmark = pytest.mark.anyio

# Characters a URL gives a meaning to, dots that are not dot segments, inner spaces,
# non-ASCII text, percent signs (decoded exactly once), the longest id.
ACCEPTED = [
    "/", "a/b", "/lead", "trail/", "a//b", "?q=1&r", "#frag", "%41", "%2F", "a%", "a b",
    "...", ".a", "a.", "./a", "a/..", "\\", "+plus", "semi;colon", "[x]", '"q"', "'", "@:",
    "é", "名前", "🙂", "x" * 256,
]  # fmt: skip
# Empty, too long, whitespace at either end (ASCII and not), control characters (C0, DEL,
# C1) anywhere, and the two dot segments.
REFUSED = [
    "", "x" * 257, " lead", "trail ", "\u00a0x", "x\u3000", "\ufeffx", "\tx", "x\n",
    "a\x00b", "a\x1fb", "a\x7fb", "a\x85b", ".", "..",
]  # fmt: skip


def segment(item_id: str) -> str:
    """The id as one path segment, every byte percent-encoded: the server must decode it
    to exactly the id. (A client's quote() leaves "." as is, and HTTP clients remove the
    dot segments "." and ".." from a URL: the rule refuses those two ids.)"""
    return "".join(f"%{byte:02X}" for byte in item_id.encode())


async def test_every_accepted_id_round_trips_and_is_recommendable(make_settings) -> None:
    async with running_app(make_settings()) as (client, _):
        items = [{"item_id": item_id, "title": f"title {i}"} for i, item_id in enumerate(ACCEPTED)]
        r = await client.post("/items", json={"items": items})
        assert r.status_code == 200, r.text
        assert [it["item_id"] for it in r.json()["items"]] == ACCEPTED
        for item_id in ACCEPTED:
            for path in (quote(item_id, safe=""), segment(item_id)):
                got = await client.get(f"/items/{path}")
                assert got.status_code == 200, (item_id, path, got.text)
                assert got.json()["item_id"] == item_id and got.json()["origin"] == "added"
        # Unencoded, an id with "/" still reaches the route (`{item_id:path}`).
        assert (await client.get("/items/a/b")).json()["item_id"] == "a/b"

        # Known in a history, and returned as results: k covers the whole catalog.
        r = await client.post(
            "/recommend", json={"history": ACCEPTED, "k": 100, "exclude_history": False}
        )
        assert r.status_code == 200 and r.json()["unknown_items"] == []
        assert set(ACCEPTED) <= {it["item_id"] for it in r.json()["items"]}


async def test_ids_outside_the_rule_get_a_422_that_states_it(make_settings) -> None:
    async with running_app(make_settings()) as (client, _):
        for item_id in REFUSED:
            with pytest.raises(ValueError):
                check_item_id(item_id)
            item = {"item_id": item_id, "title": "t"}
            r = await client.post("/items", json={"items": [item]})
            assert r.status_code == 422, (item_id, r.text)
            assert r.json()["errors"] == [
                {"loc": ["body", "items", "0", "item_id"], "msg": ITEM_ID_RULE}
            ]
            assert ITEM_ID_RULE in r.json()["detail"]
            r = await client.post("/recommend", json={"history": ["item-1", item_id]})
            assert r.status_code == 422, (item_id, r.text)
            assert r.json()["errors"][0]["loc"] == ["body", "history", "1"]
            r = await client.get(f"/items/{segment(item_id)}")
            assert r.status_code == 422, (item_id, r.text)
            assert r.json()["errors"][0]["loc"] == ["path", "item_id"]


async def test_lone_surrogates_are_refused(make_settings) -> None:
    """JSON can escape half a UTF-16 pair; such text cannot be stored or embedded."""
    async with running_app(make_settings()) as (client, _):
        headers = {"Content-Type": "application/json"}
        for body in (
            b'{"items": [{"item_id": "a\\ud800", "title": "t"}]}',
            b'{"items": [{"item_id": "a", "title": "t\\udfff"}]}',
        ):
            r = await client.post("/items", content=body, headers=headers)
            assert r.status_code == 422 and "surrogate" in r.json()["detail"], r.text
        r = await client.post("/recommend", content=b'{"history": ["\\ud83d"]}', headers=headers)
        assert r.status_code == 422


def test_training_data_ids_pass() -> None:
    """MovieLens-100K's ids (read as training reads them), Amazon ASINs and ISBNs, the
    synthetic data's integers, the test bundle's ids."""
    from training.data.readers import read_movielens_100k

    try:
        movielens = read_movielens_100k().interactions["item_id"].unique().tolist()
    except RuntimeError:  # recbole not installed: `make setup` installs it
        movielens = []
    others = ["B000GCRWCG", "B00004U9V2", "000100039X", "0", "1048575", "item-1", "item-60"]
    for item_id in [*movielens, *others]:
        assert check_item_id(item_id) == item_id
