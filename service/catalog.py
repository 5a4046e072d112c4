"""Catalog stores: where the token assignments of items added at serving time live.

Two implementations of one interface (`CatalogStore`):

* `RedisCatalog` (FLEXCODE_REDIS_URL set): shared by every replica. Keys are namespaced
  by prefix AND bundle version (`{prefix}:{<version>}:...`), so a new model never reads
  the old one's tokens. A batch of new items is assigned in ONE Lua script (atomic on the
  server): the idempotency / conflict checks for every item first, then per item the next
  dedup id of its code prefix (HINCRBY on a per-prefix hash field), a store-wide revision
  (INCR), the record written to the cache and to the `added` hash, and an event on a
  stream. Two replicas adding colliding items at once therefore never get the same token
  row. Replicas tail the stream; on (re)connect they catch up from the `added` hash. The
  bundle's own items are loaded into the cache hash once per version, pipelined.
* `LocalCatalog` (embedded default): the same semantics on one node, with a SQLite
  journal (WAL, synchronous=FULL) as the durable log; `BEGIN IMMEDIATE` makes the
  check-and-assign atomic even across worker processes sharing the file, and a poll picks
  up what other processes on the node added.

Dedup ids: an item's tokens are its L code tokens (the prefix) and one dedup token. For a
prefix the bundle already uses, numbering starts after the bundle's largest dedup id for
it (`base`, computed from the bundle identically on every replica); the store's counter
says how many ids after `base` are taken. Ids are never reused, not even after a replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from service.errors import DedupExhausted, ItemConflict, StoreUnavailable

logger = logging.getLogger(__name__)

STATUS_ADDED, STATUS_REPLACED, STATUS_UNCHANGED = "added", "replaced", "unchanged"


@dataclass(frozen=True)
class ItemRecord:
    """One added item's assignment, as stored and replicated.

    prefix: its L code tokens; base: first dedup id free after the bundle's items with
    this prefix; dedup: the assigned dedup id (-1 before assignment); seq: store-wide
    revision (larger = newer; a replace gets a new one); vector: its item vector for the
    dense head (C floats, this bundle's), so every replica serves it the same way.
    """

    id: str
    hash: str
    prefix: tuple[int, ...]
    base: int
    cf: tuple[int, ...]
    sem: tuple[int, ...]
    alpha: float
    n_cf: int
    vector: tuple[float, ...] = ()
    dedup: int = -1
    seq: int = 0
    at: float = 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data.update(
            prefix=list(self.prefix), cf=list(self.cf), sem=list(self.sem), vector=list(self.vector)
        )
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ItemRecord:
        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            hash=str(data["hash"]),
            prefix=tuple(int(x) for x in data["prefix"]),
            base=int(data["base"]),
            cf=tuple(int(x) for x in data["cf"]),
            sem=tuple(int(x) for x in data["sem"]),
            alpha=float(data["alpha"]),
            n_cf=int(data["n_cf"]),
            vector=tuple(float(x) for x in data.get("vector") or ()),
            dedup=int(data.get("dedup", -1)),
            seq=int(data.get("seq", 0)),
            at=float(data.get("at", 0.0)),
        )

    @property
    def prefix_key(self) -> str:
        return ",".join(str(t) for t in self.prefix)


@dataclass(frozen=True)
class AddOutcome:
    status: str  # added | replaced | unchanged
    record: ItemRecord


RecordsCallback = Callable[[list[ItemRecord]], Awaitable[None]]
UpCallback = Callable[[bool], None]


class CatalogStore(ABC):
    """Durable, shared (Redis) or node-local (SQLite) home of added items."""

    mode: str

    @property
    @abstractmethod
    def up(self) -> bool:
        """Whether writes can go through now."""

    @abstractmethod
    async def start(
        self,
        bundle_items: Callable[[], Iterator[tuple[str, str]]],
        on_records: RecordsCallback,
        on_up: UpCallback | None = None,
    ) -> None:
        """Connect, load what is stored (passed to on_records before returning when the
        store is reachable) and keep following changes made elsewhere.

        bundle_items() yields (item id, compact JSON) of the bundle's items, for stores
        that cache them."""

    @abstractmethod
    async def add(
        self, records: Sequence[ItemRecord], replace: bool, dedup_size: int
    ) -> list[AddOutcome]:
        """Assign dedup ids to new items, all or nothing. ItemConflict (an id with other
        content and no replace, or a bundle id), DedupExhausted, StoreUnavailable."""

    @abstractmethod
    async def get(self, item_id: str) -> ItemRecord | None:
        """The stored record of an added item, or None."""

    @abstractmethod
    async def close(self) -> None: ...


def _check_dedup(base: int, counter: int, dedup_size: int, key: str) -> None:
    if base + counter - 1 >= dedup_size:
        raise _exhausted(key, dedup_size)


def _exhausted(key: str, dedup_size: int) -> DedupExhausted:
    return DedupExhausted(
        f"no dedup id left for code prefix [{key}]: dedup_size={dedup_size} ids are taken "
        "by items sharing it; the next bundle needs a larger dedup block",
        prefix=[int(t) for t in key.split(",")],
    )


def _conflict(item_id: str, bundle: bool) -> ItemConflict:
    if bundle:
        return ItemConflict(
            f"item {item_id!r} belongs to the model bundle; bundle items cannot be added or "
            "replaced (add it under another id)",
            item_id=item_id,
        )
    return ItemConflict(
        f"item {item_id!r} already exists with different content; send 'replace': true to "
        "replace it",
        item_id=item_id,
    )


# --- embedded: SQLite journal -------------------------------------------------------------


class LocalCatalog(CatalogStore):
    """SQLite journal (WAL, synchronous=FULL): durable on one node, shared by the node's
    processes (BEGIN IMMEDIATE serialises writers; a poll reads other processes' items)."""

    mode = "embedded"

    def __init__(self, path: Path, version: str, poll_s: float = 1.0) -> None:
        self.path = Path(path)
        self.version = version
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._last_seq = 0
        self._task: asyncio.Task | None = None
        self._on_records: RecordsCallback | None = None

    @property
    def up(self) -> bool:
        return self._conn is not None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS items (
                version TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
                record TEXT NOT NULL, PRIMARY KEY (version, id));
            CREATE INDEX IF NOT EXISTS items_seq ON items (version, seq);
            CREATE TABLE IF NOT EXISTS dedup (
                version TEXT NOT NULL, prefix TEXT NOT NULL, used INTEGER NOT NULL,
                PRIMARY KEY (version, prefix));
            CREATE TABLE IF NOT EXISTS counters (
                version TEXT PRIMARY KEY, seq INTEGER NOT NULL);
            """
        )
        return conn

    def _read_since(self, seq: int) -> list[ItemRecord]:
        assert self._conn is not None
        with self._lock:
            rows = self._conn.execute(
                "SELECT record FROM items WHERE version = ? AND seq > ? ORDER BY seq",
                (self.version, seq),
            ).fetchall()
        return [ItemRecord.from_json(r[0]) for r in rows]

    async def _deliver(self, records: list[ItemRecord]) -> None:
        if records and self._on_records is not None:
            self._last_seq = max(self._last_seq, max(r.seq for r in records))
            await self._on_records(records)

    async def start(
        self,
        bundle_items: Callable[[], Iterator[tuple[str, str]]],
        on_records: RecordsCallback,
        on_up: UpCallback | None = None,
    ) -> None:
        del bundle_items  # the bundle on disk is the durable copy; nothing to cache
        self._conn = await asyncio.to_thread(self._open)
        self._on_records = on_records
        await self._deliver(await asyncio.to_thread(self._read_since, 0))
        # on_up is not called: there is no Redis in embedded mode (flexcode_redis_up stays 0).
        del on_up
        logger.info("embedded catalog journal at %s (version %s)", self.path, self.version)
        if self.poll_s > 0:
            self._task = asyncio.create_task(self._poll(), name="flexcode-journal-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._deliver(await asyncio.to_thread(self._read_since, self._last_seq))
            except Exception:  # keep polling: the next round may succeed
                logger.exception("reading the catalog journal failed")

    def _add_sync(
        self, records: Sequence[ItemRecord], replace_: bool, dedup_size: int
    ) -> list[AddOutcome]:
        assert self._conn is not None
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes = self._add_in_transaction(conn, records, replace_, dedup_size)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return outcomes

    def _add_in_transaction(
        self,
        conn: sqlite3.Connection,
        records: Sequence[ItemRecord],
        replace_: bool,
        dedup_size: int,
    ) -> list[AddOutcome]:
        version = self.version
        plan: list[tuple[ItemRecord, str]] = []
        used: dict[str, int] = {}
        for rec in records:
            row = conn.execute(
                "SELECT record FROM items WHERE version = ? AND id = ?", (version, rec.id)
            ).fetchone()
            status = STATUS_ADDED
            if row is not None:
                current = ItemRecord.from_json(row[0])
                if current.hash == rec.hash:
                    plan.append((current, STATUS_UNCHANGED))
                    continue
                if not replace_:
                    raise _conflict(rec.id, bundle=False)
                status = STATUS_REPLACED
            key = rec.prefix_key
            if key not in used:
                got = conn.execute(
                    "SELECT used FROM dedup WHERE version = ? AND prefix = ?", (version, key)
                ).fetchone()
                used[key] = got[0] if got else 0
            used[key] += 1
            _check_dedup(rec.base, used[key], dedup_size, key)
            plan.append((replace(rec, dedup=rec.base + used[key] - 1), status))
        row = conn.execute("SELECT seq FROM counters WHERE version = ?", (version,)).fetchone()
        seq = row[0] if row else 0
        outcomes = []
        for rec, status in plan:
            if status == STATUS_UNCHANGED:
                outcomes.append(AddOutcome(status, rec))
                continue
            seq += 1
            rec = replace(rec, seq=seq)
            conn.execute(
                "INSERT OR REPLACE INTO items (version, id, seq, record) VALUES (?, ?, ?, ?)",
                (version, rec.id, seq, rec.to_json()),
            )
            outcomes.append(AddOutcome(status, rec))
        for key, n in used.items():
            conn.execute(
                "INSERT OR REPLACE INTO dedup (version, prefix, used) VALUES (?, ?, ?)",
                (version, key, n),
            )
        conn.execute("INSERT OR REPLACE INTO counters (version, seq) VALUES (?, ?)", (version, seq))
        return outcomes

    async def add(
        self, records: Sequence[ItemRecord], replace: bool, dedup_size: int
    ) -> list[AddOutcome]:
        if self._conn is None:
            raise StoreUnavailable("the catalog journal is not open")
        return await asyncio.to_thread(self._add_sync, records, replace, dedup_size)

    async def get(self, item_id: str) -> ItemRecord | None:
        if self._conn is None:
            return None

        def read() -> ItemRecord | None:
            assert self._conn is not None
            with self._lock:
                row = self._conn.execute(
                    "SELECT record FROM items WHERE version = ? AND id = ?",
                    (self.version, item_id),
                ).fetchone()
            return ItemRecord.from_json(row[0]) if row else None

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with self._lock:
                self._conn.close()
            self._conn = None


# --- Redis ----------------------------------------------------------------------------------

# KEYS: items, added, dedup, seq, events. ARGV: replace ('1'/'0'), dedup_size, stream maxlen,
# then one JSON record per item. Checks every item before writing anything (all or nothing).
_ADD_LUA = """
local replace = ARGV[1] == '1'
local dedup_size = tonumber(ARGV[2])
local recs, state, used = {}, {}, {}
for i = 4, #ARGV do
  local rec = cjson.decode(ARGV[i])
  local cur = redis.call('HGET', KEYS[1], rec.id)
  local st = 'added'
  if cur then
    local c = cjson.decode(cur)
    if c.o == 'b' then return {'bundle', rec.id} end
    if c.hash == rec.hash then st = cur
    elseif replace then st = 'replaced'
    else return {'conflict', rec.id} end
  end
  recs[#recs + 1] = rec
  state[#state + 1] = st
  if st == 'added' or st == 'replaced' then
    local pk = table.concat(rec.prefix, ',')
    if used[pk] == nil then used[pk] = tonumber(redis.call('HGET', KEYS[3], pk) or '0') end
    used[pk] = used[pk] + 1
    if rec.base + used[pk] - 1 >= dedup_size then return {'full', pk} end
  end
end
local out = {'ok'}
for i, rec in ipairs(recs) do
  local st = state[i]
  if st == 'added' or st == 'replaced' then
    local pk = table.concat(rec.prefix, ',')
    rec.dedup = rec.base + redis.call('HINCRBY', KEYS[3], pk, 1) - 1
    rec.seq = redis.call('INCR', KEYS[4])
    local js = cjson.encode(rec)
    redis.call('HSET', KEYS[1], rec.id, js)
    redis.call('HSET', KEYS[2], rec.id, js)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'item', js)
    out[#out + 1] = st
    out[#out + 1] = js
  else
    out[#out + 1] = 'unchanged'
    out[#out + 1] = st
  end
end
return out
"""

# Put back records a replica holds but Redis lost (a restart without persistence), keeping
# counters ahead of them so no later assignment collides. KEYS as above; ARGV: maxlen, records.
_RESEED_LUA = """
local n = 0
for i = 2, #ARGV do
  local rec = cjson.decode(ARGV[i])
  if redis.call('HEXISTS', KEYS[1], rec.id) == 0 then
    local pk = table.concat(rec.prefix, ',')
    local need = rec.dedup - rec.base + 1
    if tonumber(redis.call('HGET', KEYS[3], pk) or '0') < need then
      redis.call('HSET', KEYS[3], pk, need)
    end
    if tonumber(redis.call('GET', KEYS[4]) or '0') < rec.seq then
      redis.call('SET', KEYS[4], rec.seq)
    end
    redis.call('HSET', KEYS[1], rec.id, ARGV[i])
    redis.call('HSET', KEYS[2], rec.id, ARGV[i])
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'item', ARGV[i])
    n = n + 1
  end
end
return n
"""


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
    ) -> None:
        from redis import asyncio as aioredis

        self.url = url
        ns = f"{prefix}:{{{version}}}"
        self.keys = {
            name: f"{ns}:{name}"
            for name in ("items", "added", "dedup", "seq", "events", "bundle_loaded")
        }
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
        self._add_script = self._redis.register_script(_ADD_LUA)
        self._reseed_script = self._redis.register_script(_RESEED_LUA)
        self._up = False
        self._closing = False
        self._cursor = "0-0"
        self._task: asyncio.Task | None = None
        self._bundle_items: Callable[[], Iterator[tuple[str, str]]] | None = None
        self._on_records: RecordsCallback | None = None
        self._on_up: UpCallback | None = None

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
        bundle_items: Callable[[], Iterator[tuple[str, str]]],
        on_records: RecordsCallback,
        on_up: UpCallback | None = None,
    ) -> None:
        self._bundle_items = bundle_items
        self._on_records = on_records
        self._on_up = on_up
        try:
            await self._sync()
            self._set_up(True)
        except _REDIS_ERRORS as e:
            logger.warning("redis at %s unreachable at start-up (%s); retrying", self.url, e)
            self._set_up(False)
        self._task = asyncio.create_task(self._supervise(), name="flexcode-redis")

    async def _load_bundle(self) -> None:
        """Write the bundle's items into the cache hash once per version (pipelined)."""
        marker = self.keys["bundle_loaded"]
        if await self._redis.exists(marker):
            return
        assert self._bundle_items is not None
        started, count, chunk = time.perf_counter(), 0, {}
        for item_id, value in self._bundle_items():
            chunk[item_id] = value
            if len(chunk) >= 5000:
                await self._redis.hset(self.keys["items"], mapping=chunk)
                count, chunk = count + len(chunk), {}
        if chunk:
            await self._redis.hset(self.keys["items"], mapping=chunk)
            count += len(chunk)
        await self._redis.set(marker, str(count))
        logger.info(
            "loaded %d bundle items into redis in %.1f s", count, time.perf_counter() - started
        )

    async def _sync(self) -> None:
        """(Re)connect: bundle cache, put back what Redis lost, catch up on added items."""
        await self._redis.ping()
        await self._load_bundle()
        last = await self._redis.xrevrange(self.keys["events"], count=1)
        cursor = last[0][0].decode() if last else "0-0"
        stored: dict[str, ItemRecord] = {}
        async for _key, value in self._redis.hscan_iter(self.keys["added"], count=1000):
            rec = ItemRecord.from_json(value)
            stored[rec.id] = rec
        if self._local_records is not None:
            lost = [r for r in self._local_records() if r.id not in stored]
            if lost:
                logger.warning("redis lost %d added items; writing them back", len(lost))
                await self._reseed_script(
                    keys=self._key_list(),
                    args=[self.stream_maxlen, *(r.to_json() for r in lost)],
                )
        self._cursor = cursor
        if stored and self._on_records is not None:
            await self._on_records(sorted(stored.values(), key=lambda r: r.seq))

    def _key_list(self) -> list[str]:
        return [self.keys[k] for k in ("items", "added", "dedup", "seq", "events")]

    async def _supervise(self) -> None:
        """Tail the event stream while up; reconnect with exponential backoff while down."""
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
            except _REDIS_ERRORS as e:
                if self._up:
                    logger.warning("lost redis at %s: %s", self.url, e)
                self._set_up(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception:
                logger.exception("unexpected error following redis; retrying")
                await asyncio.sleep(backoff)

    async def _tail_once(self) -> None:
        got = await self._tail.xread(
            {self.keys["events"]: self._cursor}, count=500, block=self._block_ms
        )
        records = []
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                self._cursor = entry_id.decode()
                records.append(ItemRecord.from_json(fields[b"item"]))
        if records and self._on_records is not None:
            await self._on_records(records)

    async def add(
        self, records: Sequence[ItemRecord], replace: bool, dedup_size: int
    ) -> list[AddOutcome]:
        if not self._up:
            raise StoreUnavailable(
                "redis is unreachable: new items cannot be stored now (retry later)"
            )
        args = [
            "1" if replace else "0",
            dedup_size,
            self.stream_maxlen,
            *(r.to_json() for r in records),
        ]
        try:
            out = await self._add_script(keys=self._key_list(), args=args)
        except _REDIS_ERRORS as e:
            self._set_up(False)
            raise StoreUnavailable(
                f"redis became unreachable while storing new items ({e}); retry later"
            ) from e
        status = out[0].decode()
        if status == "bundle":
            raise _conflict(out[1].decode(), bundle=True)
        if status == "conflict":
            raise _conflict(out[1].decode(), bundle=False)
        if status == "full":
            raise _exhausted(out[1].decode(), dedup_size)
        outcomes = []
        for i in range(1, len(out), 2):
            outcomes.append(AddOutcome(out[i].decode(), ItemRecord.from_json(out[i + 1])))
        return outcomes

    async def get(self, item_id: str) -> ItemRecord | None:
        if not self._up:
            return None
        try:
            value = await self._redis.hget(self.keys["added"], item_id)
        except _REDIS_ERRORS:
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


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)


_REDIS_ERRORS = _redis_errors()
