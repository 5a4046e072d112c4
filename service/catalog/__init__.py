"""Catalog stores: where the token assignments of items added at serving time live.

Two implementations of one interface (`CatalogStore`, store.py), one module each:

* `RedisCatalog` (redis_store.py; FLEXCODE_REDIS_URL set): shared by every replica. A
  batch of new items is assigned atomically by a Lua script (add_items.lua); replicas
  follow a trimmed stream of changes, catch up from the authoritative `added` hash on
  (re)connect or when the stream was trimmed past what they had read, and write back
  what a Redis restart without persistence lost (reseed_items.lua).
* `LocalCatalog` (sqlite_store.py; the embedded default): the same semantics on one
  node, with a SQLite journal (WAL, synchronous=FULL) as the durable log, shared by the
  node's worker processes.

records.py is the wire format both store and replicate (`ItemRecord`, `Retirement`);
item_cache.py the compact entries of bundle items in the Redis item cache. The Redis store's
parts: redis_add.py (the add script's arguments and reply), redis_bundle.py (what it loads
from the bundle once per version), redis_streams.py (reading trimmed streams).

Retired items (DELETE /items/{id}) are stored beside the added ones, keyed by external id
rather than bundle version, and replicated the same way (redis_retirements.py,
sqlite_retirements.py). Per-user event histories (histories.py) are stored too, but not
replicated: every request reads them.

Dedup ids: an item's tokens are its L code tokens (the prefix) and one dedup token. For a
prefix the bundle already uses, numbering starts after the bundle's largest dedup id for
it (`base`, computed from the bundle identically on every replica); the store's counter
says how many ids after `base` are taken. Ids are never reused, not even after a replace.
A new item whose own prefix is full takes the first code sequence of its placement order
with a free id (placement.py; the same walk inside add_items.lua), so a 507 only comes
once every sequence of that order is full.
"""

from service.catalog.records import (
    STATUS_ADDED,
    STATUS_REPLACED,
    STATUS_UNCHANGED,
    AddOutcome,
    ItemRecord,
    Retirement,
)
from service.catalog.redis_store import (
    ADD_ITEMS_LUA,
    CONNECTION_ERRORS,
    RESEED_ITEMS_LUA,
    RedisCatalog,
)
from service.catalog.sqlite_store import LocalCatalog
from service.catalog.store import (
    BundleItems,
    CatalogStore,
    RecordsCallback,
    ResyncCallback,
    RetirementsCallback,
    UpCallback,
    check_dedup,
    dedup_exhausted,
    item_conflict,
)

# Private names the single-module service/catalog.py had, still importable from here.
_check_dedup, _exhausted, _conflict = check_dedup, dedup_exhausted, item_conflict
_ADD_LUA, _RESEED_LUA = ADD_ITEMS_LUA, RESEED_ITEMS_LUA
_REDIS_ERRORS = CONNECTION_ERRORS

__all__ = [
    "ADD_ITEMS_LUA",
    "CONNECTION_ERRORS",
    "RESEED_ITEMS_LUA",
    "STATUS_ADDED",
    "STATUS_REPLACED",
    "STATUS_UNCHANGED",
    "AddOutcome",
    "BundleItems",
    "CatalogStore",
    "ItemRecord",
    "LocalCatalog",
    "RecordsCallback",
    "RedisCatalog",
    "ResyncCallback",
    "Retirement",
    "RetirementsCallback",
    "UpCallback",
]
