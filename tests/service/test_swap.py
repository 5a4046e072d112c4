"""New bundle versions without downtime, through real HTTP: a swap under hundreds of
concurrent requests fails none, and each response is entirely one version's; added items
are carried over (tokenized again by the new bundle) and retired items stay retired; a
corrupted version is refused while the old one keeps serving; the LATEST poll picks a
new version up by itself; two Redis replicas swap and share the carried items."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from models.bundle import resolve_bundle_path
from tests.service.conftest import REDIS_URL, metric_value, running_app, write_roomy_bundle
from tests.service.test_replication import new_item, wait_for

pytestmark = pytest.mark.anyio

KEY = "swap-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
OLD_ITEMS, NEW_ITEMS = 60, 70  # item-61 .. item-70 exist in the new version only
IN_FLIGHT = 200


def new_version(root: Path, seed: int = 1) -> str:
    """Export another bundle into `root` (LATEST now names it); its version."""
    return write_roomy_bundle(root, n_items=NEW_ITEMS, seed=seed).name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "bundles"
    root.mkdir()
    write_roomy_bundle(root, n_items=OLD_ITEMS)
    return root


async def version(client) -> str:
    return (await client.get("/readyz")).json()["model_version"]


class Load:
    """IN_FLIGHT clients sending /recommend back to back until stopped; every answer kept."""

    def __init__(self, client) -> None:
        self.client = client
        self.answers: list[tuple[int, dict]] = []
        self.stop = asyncio.Event()

    async def _one_client(self, n: int) -> None:
        history = [f"item-{1 + n % OLD_ITEMS}", f"item-{1 + (7 * n) % OLD_ITEMS}", "carried"]
        while not self.stop.is_set():
            r = await self.client.post("/recommend", json={"history": history, "k": 20})
            self.answers.append((r.status_code, r.json()))

    async def run(self) -> None:
        await asyncio.gather(*(self._one_client(n) for n in range(IN_FLIGHT)))


def check_one_version_each(answers, old: str, new: str) -> None:
    assert answers and all(status == 200 for status, _ in answers), {s for s, _ in answers}
    versions = {body["model_version"] for _, body in answers}
    assert versions <= {old, new}
    for _, body in answers:
        ids = {it["item_id"] for it in body["items"]}
        assert len(ids) == 20 and "carried" not in ids
        if body["model_version"] == old:  # nothing from the new version's catalogue
            assert not {f"item-{i}" for i in range(OLD_ITEMS + 1, NEW_ITEMS + 1)} & ids
        # The added item is in the history: known to the old version, and to the new one
        # from its first answer (carried before the switch).
        assert body["unknown_items"] == []
        assert "item-2" not in ids  # retired before the swap: in no version


async def test_swap_under_load_fails_no_request(make_settings, root) -> None:
    settings = make_settings(bundle_path=root, api_keys=[KEY], bundle_poll_s=0)
    async with running_app(settings) as (client, app):
        old = await version(client)
        r = await client.post("/items", json={"items": [new_item("carried")]}, headers=AUTH)
        assert r.status_code == 200, r.text
        r_added_at = r.json()["items"][0]["added_at"]
        assert (await client.delete("/items/item-2", headers=AUTH)).status_code == 200
        new = new_version(root)

        load = Load(client)
        running = asyncio.create_task(load.run())
        await wait_for(lambda: len(load.answers) >= IN_FLIGHT)  # all of them in flight
        before = len(load.answers)
        r = await client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200, r.text
        during = len(load.answers) - before
        await wait_for(lambda: len(load.answers) >= before + during + IN_FLIGHT)
        load.stop.set()
        await running

        body = r.json()
        assert body["status"] == "swapped" and body["model_version"] == new
        assert body["previous_version"] == old and body["carried_items"] == 1
        check_one_version_each(load.answers, old, new)
        assert load.answers[-1][1]["model_version"] == new
        assert during > 0  # requests were answered while the new version loaded

        # The added item, tokenized by the new bundle, under the same id and time.
        got = (await client.get("/items/carried")).json()
        assert got["origin"] == "added" and got["added_at"] == r_added_at
        assert (await client.get("/items/item-2")).json()["retired"] is True
        ready = (await client.get("/readyz")).json()
        assert ready["model_version"] == new and ready["added_items"] == 1
        assert ready["last_swap"]["status"] == "swapped"
        text = (await client.get("/metrics")).text
        assert metric_value(text, "flexcode_bundle_swaps_total") == 1
        assert metric_value(text, "flexcode_model_info", version=new) == 1
        assert metric_value(text, "flexcode_model_info", version=old) == 0
        # The old engine was closed once its requests were done.
        assert app.state.engine.version == new

        # Nothing new: unchanged.
        r = await client.post("/admin/reload", headers=AUTH)
        assert r.json()["status"] == "unchanged" and r.json()["model_version"] == new

    # A restart serves the new version with the carried item, as stored.
    async with running_app(settings) as (client, _):
        assert await version(client) == new
        assert (await client.get("/items/carried")).json()["tokens"] == got["tokens"]


async def test_corrupted_version_is_refused_and_the_old_keeps_serving(
    make_settings, root, caplog
) -> None:
    settings = make_settings(bundle_path=root, api_keys=[KEY], bundle_poll_s=0)
    async with running_app(settings) as (client, _):
        old = await version(client)
        bad = new_version(root)
        target = resolve_bundle_path(root) / "items.npz"
        target.write_bytes(target.read_bytes()[:-16] + b"\0" * 16)  # same size, other bytes

        r = await client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 409, r.text
        assert bad in r.json()["detail"] and old in r.json()["detail"]
        assert await version(client) == old
        r = await client.post("/recommend", json={"history": ["item-1"], "k": 5})
        assert r.status_code == 200 and r.json()["model_version"] == old
        ready = (await client.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["last_swap"]["status"] == "refused"
        assert "sha256" in ready["last_swap"]["detail"] or "hash" in ready["last_swap"]["detail"]
        assert any("refused" in rec.getMessage() for rec in caplog.records)
        text = (await client.get("/metrics")).text
        assert metric_value(text, "flexcode_bundle_refusals_total") == 1

        # A good version after it is taken.
        good = new_version(root, seed=2)
        r = await client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["model_version"] == good


async def test_latest_is_polled(make_settings, root) -> None:
    settings = make_settings(bundle_path=root, bundle_poll_s=0.2)
    async with running_app(settings) as (client, _):
        old = await version(client)
        new = new_version(root)

        async def serving_new() -> bool:
            return await version(client) == new

        await wait_for(serving_new, timeout=60)
        r = await client.post("/recommend", json={"history": ["item-65"], "k": 3})
        assert r.json()["model_version"] == new and r.json()["unknown_items"] == []
        assert old != new


async def test_two_redis_replicas_swap_and_share_carried_items(
    make_settings, root, redis_prefix
) -> None:
    settings = make_settings(
        bundle_path=root, redis_url=REDIS_URL, redis_prefix=redis_prefix, bundle_poll_s=0
    )
    async with running_app(settings) as (a, a_app), running_app(settings) as (b, b_app):
        ids = [f"shared-{i}" for i in range(5)]
        r = await a.post("/items", json={"items": [new_item(i) for i in ids]})
        assert r.status_code == 200, r.text
        await wait_for(lambda: b_app.state.engine.status().added_items == len(ids))
        assert (await a.delete("/items/shared-0")).status_code == 200
        new = new_version(root)

        started = time.monotonic()
        ra, rb = await asyncio.gather(a.post("/admin/reload"), b.post("/admin/reload"))
        assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
        assert time.monotonic() - started < 120
        # Between them every item was carried once; the other found it stored.
        assert ra.json()["carried_items"] + rb.json()["carried_items"] >= len(ids)
        tokens = {}
        for client in (a, b):
            assert await version(client) == new
            for item_id in ids:
                got = (await client.get(f"/items/{item_id}")).json()
                tokens.setdefault(item_id, got["tokens"])
                assert got["tokens"] == tokens[item_id]  # one assignment, both replicas
                assert got["retired"] is (item_id == "shared-0")
        # An item added on the new version reaches the other replica.
        r = await b.post("/items", json={"items": [new_item("after-swap")]})
        assert r.json()["model_version"] == new
        await wait_for(lambda: "after-swap" in {r.id for r in a_app.state.engine.added_records()})
