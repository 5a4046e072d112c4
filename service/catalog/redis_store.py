"""Redis mode: one catalog shared by every replica.

Keys are namespaced by prefix AND bundle version (`{prefix}:{<version>}:...`), so a new
model never reads the old one's tokens:

  items   hash  id -> JSON: the bundle's items (`{"o":"b",...}`, loaded once per version,
                pipelined) and the added ones; the Lua scripts check ids against it
  added   hash  id -> ItemRecord JSON: the authoritative set of added items
  dedup   hash  code prefix -> how many dedup ids after the bundle's are taken
  bases   hash  code prefix -> the bundle's base there (placement.py), loaded once per
                version; `bases_loaded` is set once it is complete
  seq     int   store-wide revision
  events  stream of `item` entries, one per write, trimmed to about `stream_maxlen`

A batch of new items is assigned in ONE Lua script (add_items.lua, atomic on the
server), so two replicas adding colliding items at once never get the same token row.
Replicas tail the stream; on (re)connect they catch up from the `added` hash and write
back what Redis lost (reseed_items.lua). The stream is trimmed, so a replica that falls
further behind than `stream_maxlen` entries (a long pause, a slow apply during a bulk
import) would never see the trimmed items: after every read it checks whether entries
past its position were trimmed and, if so, reloads the `added` hash (a resync).

Retired items (redis_retirements.py) ride the same path: their own stream, read by the
same XREAD, reloaded from their hash on (re)connect or after a trim, written back when
Redis lost them. Their keys carry no bundle version: every version served sees them.

Beside this module: redis_streams.py (trimmed-stream reads), redis_bundle.py (the
per-version loads from the bundle), item_cache.py (the `items` hash's bundle entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from importlib import resources

from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.catalog import redis_add, redis_bundle
from service.catalog.records import AddOutcome, ItemRecord, Retirement
from service.catalog.redis_retirements import RedisRetirements
from service.catalog.redis_streams import ORIGIN, stream_end, trimmed_past
from service.catalog.store import (
    BundleItems,
    CatalogStore,
    RecordsCallback,
    ResyncCallback,
    RetirementsCallback,
    UpCallback,
)
from service.errors import StoreUnavailable

logger = logging.getLogger(__name__)

# Connection-level failures: Redis is down or unreachable (writes refused, reconnect).
CONNECTION_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def _read_lua(name: str) -> str:
    """A Lua script shipped beside this module (package data), read once at import, so
    a missing file stops the service at start-up rather than at its first write."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


ADD_ITEMS_LUA = _read_lua("add_items.lua")
RESEED_ITEMS_LUA = _read_lua("reseed_items.lua")


class RedisCatalog(CatalogStore):
    """Shared catalog in Redis (redis-py asyncio); see the module docstring for the keys."""

    mode = "redis"

    def __init__(
        self,
        url: str,
        prefix: str,
        version: str,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        stream_maxlen: int = 100_000,
        local_records: Callable[[], list[ItemRecord]] | None = None,
        local_retirements: Callable[[], list[Retirement]] | None = None,
    ) -> None:
        if stream_maxlen < 1:
            raise ValueError(f"stream_maxlen must be at least 1, got {stream_maxlen}")
        self.url = url
        ns = f"{prefix}:{{{version}}}"
        names = ("items", "added", "dedup", "seq", "events", "bundle_loaded")
        names += ("bases", "bases_loaded")  # placement.py
        self.keys = {name: f"{ns}:{name}" for name in names}
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stream_maxlen = stream_maxlen
        self._local_records = local_records
        self._block_ms = 500
        common = {"socket_connect_timeout": 1.0, "retry_on_timeout": False}
        self._redis = aioredis.Redis.from_url(url, socket_timeout=2.0, **common)
        # The tail blocks in XREAD: its own connection, with a timeout above the block time.
        self._tail = aioredis.Redis.from_url(
            url, socket_timeout=self._block_ms / 1000 + 2.0, **common
        )
        self._add_script = self._redis.register_script(ADD_ITEMS_LUA)
        self._reseed_script = self._redis.register_script(RESEED_ITEMS_LUA)
        self.retirements = RedisRetirements(
            self._redis, prefix, stream_maxlen, local=local_retirements
        )
        self._up = False
        self._closing = False
        self._cursor = ORIGIN
        self._task: asyncio.Task | None = None
        self._bundle_items: BundleItems | None = None
        self._on_records: RecordsCallback | None = None
        self._on_up: UpCallback | None = None
        self._on_resync: ResyncCallback | None = None

    @property
    def up(self) -> bool:
        return self._up

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            (logger.info if up else logger.warning)(
                "redis at %s is %s", self.url, "up" if up else "DOWN (writes refused)"
            )
        self._up = up
        if self._on_up is not None:
            self._on_up(up)

    async def start(
        self,
        bundle_items: BundleItems,
        on_records: RecordsCallback,
        on_up: UpCallback | None = None,
        on_resync: ResyncCallback | None = None,
        on_retirements: RetirementsCallback | None = None,
    ) -> None:
        self._bundle_items = bundle_items
        self._on_records = on_records
        self._on_up = on_up
        self._on_resync = on_resync
        self.retirements.on_change = on_retirements
        self.retirements.on_resync = on_resync
        try:
            await self._sync()
            self._set_up(True)
        except CONNECTION_ERRORS as e:
            logger.warning("redis at %s unreachable at start-up (%s); retrying", self.url, e)
            self._set_up(False)
        self._task = asyncio.create_task(self._supervise(), name="flexcode-redis")

    async def _stream_end(self) -> str:
        return await stream_end(self._redis, self.keys["events"])

    async def _read_added(self) -> dict[str, ItemRecord]:
        stored: dict[str, ItemRecord] = {}
        async for _key, value in self._redis.hscan_iter(self.keys["added"], count=1000):
            rec = ItemRecord.from_json(value)
            stored[rec.id] = rec
        return stored

    async def _deliver(self, stored: dict[str, ItemRecord]) -> int | None:
        if not stored or self._on_records is None:
            return 0
        return await self._on_records(sorted(stored.values(), key=lambda r: r.seq))

    async def _sync(self) -> None:
        """(Re)connect: bundle cache, put back what Redis lost, catch up on added items."""
        await self._redis.ping()
        assert self._bundle_items is not None
        keys = self.keys
        await redis_bundle.load_items(
            self._redis, keys["items"], keys["bundle_loaded"], self._bundle_items
        )
        await redis_bundle.load_bases(
            self._redis, keys["bases"], keys["bases_loaded"], self._bundle_items
        )
        cursor = await self._stream_end()
        stored = await self._read_added()
        if self._local_records is not None:
            lost = [r for r in self._local_records() if r.id not in stored]
            if lost:
                logger.warning("redis lost %d added items; writing them back", len(lost))
                await self._reseed_script(
                    keys=self._key_list(),
                    args=[self.stream_maxlen, *(r.to_json() for r in lost)],
                )
        self._cursor = cursor
        await self._deliver(stored)
        await self.retirements.sync(reseed=True)

    async def _resync(self, trimmed_to: str) -> None:
        """The stream lost entries this replica had not read: reload the `added` hash, the
        authoritative copy, and go on tailing from the stream's end."""
        logger.warning(
            "replication stream %s was trimmed past this replica's last-read entry %s "
            "(oldest left: %s; it keeps about %d entries): items may have been missed, "
            "reloading every added item from redis",
            self.keys["events"],
            self._cursor,
            trimmed_to,
            self.stream_maxlen,
        )
        if self._on_resync is not None:
            self._on_resync()
        started = time.perf_counter()
        cursor = await self._stream_end()
        stored = await self._read_added()
        self._cursor = cursor
        changed = await self._deliver(stored)
        logger.info(
            "resynchronised from redis in %.1f s: %d added items read, %s new or newer here",
            time.perf_counter() - started,
            len(stored),
            "?" if changed is None else changed,
        )

    def _key_list(self) -> list[str]:
        names = ("items", "added", "dedup", "seq", "events", "bases", "bases_loaded")
        return [self.keys[k] for k in names]

    async def _supervise(self) -> None:
        """Tail the event stream while up; reconnect with exponential backoff while down.

        Written out rather than left to redis-py's `Retry(ExponentialBackoff())`: a retry
        policy repeats one command, but coming back from an outage is more than a command
        (reload the hash, write back what Redis lost, report up/down for /readyz and the
        metric, resume the stream at the right entry), and while down the replica must
        answer writes with 503 at once instead of blocking them inside a retry loop."""
        backoff = self.backoff_initial_s
        while not self._closing:
            try:
                if not self._up:
                    await self._sync()
                    self._set_up(True)
                    backoff = self.backoff_initial_s
                await self._tail_once()
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as e:
                if self._up:
                    logger.warning("lost redis at %s: %s", self.url, e)
                self._set_up(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception:
                logger.exception("unexpected error following redis; retrying")
                await asyncio.sleep(backoff)

    async def _tail_once(self) -> None:
        retired = self.retirements.events_key
        got = await self._tail.xread(
            {self.keys["events"]: self._cursor, retired: self.retirements.cursor},
            count=500,
            block=self._block_ms,
        )
        pairs = got.items() if isinstance(got, dict) else got or []  # RESP3 / RESP2
        batches = {(k.decode() if isinstance(k, bytes) else k): b for k, b in pairs}
        await self.retirements.take(batches.get(retired, []))
        entries = batches.get(self.keys["events"], [])
        if not entries:
            return
        # After the read, not before: entries trimmed between a check and the read would
        # otherwise go unnoticed.
        trimmed_to = await trimmed_past(self._redis, self.keys["events"], self._cursor)
        if trimmed_to is not None:
            await self._resync(trimmed_to)
            return
        records = []
        for entry_id, fields in entries:
            self._cursor = entry_id.decode()
            records.append(ItemRecord.from_json(fields[b"item"]))
        if self._on_records is not None:
            await self._on_records(records)

    async def add(
        self, records: Sequence[ItemRecord], replace: bool, dedup_size: int
    ) -> list[AddOutcome]:
        if not self._up:
            raise StoreUnavailable(
                "redis is unreachable: new items cannot be stored now (retry later)"
            )
        out = await self._run_add(records, replace, dedup_size, with_orders=False)
        if redis_add.wants_orders(out, records):
            out = await self._run_add(records, replace, dedup_size, with_orders=True)
        if redis_add.lost_bases(out):
            self._set_up(False)  # the supervisor reloads what Redis lost, bases included
            raise StoreUnavailable(
                "redis lost the bundle's dedup bases (restarted without its data?); they "
                "are being loaded again: retry later"
            )
        return redis_add.parse_reply(out, dedup_size)

    async def _run_add(
        self, records: Sequence[ItemRecord], replace: bool, dedup_size: int, with_orders: bool
    ) -> list:
        """One run of add_items.lua (redis_add.py)."""
        args = redis_add.add_args(records, replace, dedup_size, self.stream_maxlen, with_orders)
        try:
            return await self._add_script(keys=self._key_list(), args=args)
        except CONNECTION_ERRORS as e:
            self._set_up(False)
            raise StoreUnavailable(
                f"redis became unreachable while storing new items ({e}); retry later"
            ) from e

    async def retire(self, item_ids: Sequence[str], retired: bool) -> list[Retirement]:
        if not self._up:
            raise StoreUnavailable("redis is unreachable: retirements cannot be stored now")
        try:
            changes = await self.retirements.write(item_ids, retired, round(time.time(), 3))
        except CONNECTION_ERRORS as e:
            self._set_up(False)
            raise StoreUnavailable(
                f"redis became unreachable while storing a retirement ({e}); retry later"
            ) from e
        await self.retirements.apply_written(changes)
        return changes

    async def catch_up_retirements(self) -> None:
        if self._up:
            await self.retirements.catch_up()

    async def get(self, item_id: str) -> ItemRecord | None:
        if not self._up:
            return None
        try:
            value = await self._redis.hget(self.keys["added"], item_id)
        except CONNECTION_ERRORS:
            self._set_up(False)
            return None
        return ItemRecord.from_json(value) if value else None

    async def close(self) -> None:
        # The tail blocks at most block_ms in XREAD: let it see the flag and return. A
        # cancelled XREAD can leave redis-py waiting on a read that never completes, so
        # cancelling is only the fallback, and is not waited on for long.
        self._closing = True
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=self._block_ms / 1000 + 3.0)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
        for client in (self._redis, self._tail):
            with contextlib.suppress(Exception):
                await client.aclose()
