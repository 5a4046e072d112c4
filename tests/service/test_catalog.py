"""The catalog stores on their own: atomic dedup assignment, idempotency, conflicts."""

import asyncio
from pathlib import Path

import pytest

from service.catalog import LocalCatalog, RedisCatalog
from service.errors import DedupExhausted, ItemConflict
from tests.service.conftest import REDIS_URL

pytestmark = pytest.mark.anyio


def record(item_id: str, content: str = "a", prefix=(5, 6, 7), base: int = 0):
    from service.catalog import ItemRecord

    return ItemRecord(
        id=item_id, hash=content, prefix=prefix, base=base, cf=(1, 2, 3, 4), sem=(4, 3, 2, 1),
        alpha=0.25, n_cf=1,
    )  # fmt: skip


def no_bundle():
    return iter([("item-1", '{"o":"b","t":[1,2,3,4]}')])


async def _exercise(store) -> None:
    seen: list = []

    async def on_records(records):
        seen.extend(records)

    await store.start(no_bundle, on_records)
    out = await store.add([record("a", base=2), record("b", base=2)], False, 10)
    assert [o.status for o in out] == ["added", "added"]
    assert [o.record.dedup for o in out] == [2, 3]  # numbering continues after the bundle
    assert out[1].record.seq > out[0].record.seq
    again = await store.add([record("a", base=2)], False, 10)
    assert again[0].status == "unchanged" and again[0].record == out[0].record
    with pytest.raises(ItemConflict, match="replace"):
        await store.add([record("c", base=2), record("a", "other", base=2)], False, 10)
    assert await store.get("c") is None  # all or nothing
    replaced = await store.add([record("a", "other", base=2)], True, 10)
    assert replaced[0].status == "replaced" and replaced[0].record.dedup == 4  # never reused
    with pytest.raises(DedupExhausted, match="dedup"):
        await store.add([record(f"x{i}", base=2) for i in range(6)], False, 10)
    assert (await store.get("a")).hash == "other"


async def test_local_catalog(tmp_path: Path) -> None:
    store = LocalCatalog(tmp_path / "j.sqlite3", "v1", poll_s=0)
    try:
        await _exercise(store)
    finally:
        await store.close()
    # Durable: a new instance reads what was written.
    reopened = LocalCatalog(tmp_path / "j.sqlite3", "v1", poll_s=0)
    got: list = []

    async def on_records(records):
        got.extend(records)

    await reopened.start(no_bundle, on_records)
    await reopened.close()
    assert {r.id for r in got} == {"a", "b"}


async def test_redis_catalog(redis_prefix: str) -> None:
    store = RedisCatalog(REDIS_URL, redis_prefix, "v1")
    try:
        await _exercise(store)
        with pytest.raises(ItemConflict, match="bundle"):
            await store.add([record("item-1")], True, 10)
    finally:
        await store.close()


async def test_redis_concurrent_adds_get_distinct_dedup_ids(redis_prefix: str) -> None:
    stores = [RedisCatalog(REDIS_URL, redis_prefix, "v1") for _ in range(4)]

    async def ignore(records):
        return None

    try:
        for s in stores:
            await s.start(no_bundle, ignore)
        batches = await asyncio.gather(
            *(stores[i % 4].add([record(f"n{i}")], False, 100) for i in range(16))
        )
        dedups = [b[0].record.dedup for b in batches]
        assert sorted(dedups) == list(range(16))
    finally:
        for s in stores:
            await s.close()


def test_package_keeps_the_old_module_names() -> None:
    """service/catalog.py became a package: what it exported is importable as before."""
    import service.catalog as catalog

    names = [
        "STATUS_ADDED", "STATUS_REPLACED", "STATUS_UNCHANGED", "ItemRecord", "AddOutcome",
        "RecordsCallback", "UpCallback", "CatalogStore", "LocalCatalog", "RedisCatalog",
        "_check_dedup", "_exhausted", "_conflict", "_ADD_LUA", "_RESEED_LUA", "_REDIS_ERRORS",
    ]  # fmt: skip
    missing = [name for name in names if not hasattr(catalog, name)]
    assert not missing


def test_lua_scripts_are_files_of_the_package() -> None:
    from importlib import resources

    from service.catalog import ADD_ITEMS_LUA, RESEED_ITEMS_LUA

    files = resources.files("service.catalog")
    assert files.joinpath("add_items.lua").read_text(encoding="utf-8") == ADD_ITEMS_LUA
    assert files.joinpath("reseed_items.lua").read_text(encoding="utf-8") == RESEED_ITEMS_LUA
    assert "XADD" in ADD_ITEMS_LUA and "HEXISTS" in RESEED_ITEMS_LUA


def test_redis_catalog_refuses_an_empty_stream() -> None:
    with pytest.raises(ValueError, match="stream_maxlen"):
        RedisCatalog(REDIS_URL, "unused", "v1", stream_maxlen=0)
