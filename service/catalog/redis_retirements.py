"""Retired items in Redis: the keys, the two scripts, and this replica's copy kept up to
date beside the added items: `RedisCatalog` reads their stream in the same XREAD as the
items', and calls `sync` on (re)connect, `take` with what the tail read and `catch_up`
before each recommendation; a trimmed stream forces a reload, as for the items.

Retirements are keyed by external id, not by bundle version, so every version served
(two at once during a swap, or replicas not yet switched) reads the same set:

  {prefix}:{retired}:state   hash  id -> Retirement JSON (retired or restored; never deleted)
  {prefix}:{retired}:seq     int   revision counter
  {prefix}:{retired}:events  stream of `retirement` entries, trimmed to about maxlen

(`retired` has no '-', so it is never a bundle version: those are
`<dataset>-<time>-<hash>`.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from importlib import resources

from redis import asyncio as aioredis

from service.catalog.records import Retirement
from service.catalog.redis_streams import ORIGIN, stream_end, stream_id, trimmed_past
from service.catalog.store import ResyncCallback, RetirementsCallback

logger = logging.getLogger(__name__)

RETIRE_ITEMS_LUA = resources.files(__package__).joinpath("retire_items.lua").read_text("utf-8")
RESEED_RETIREMENTS_LUA = (
    resources.files(__package__).joinpath("reseed_retirements.lua").read_text("utf-8")
)
ENTRY_FIELD = b"retirement"


class RedisRetirements:
    """Reads and writes of the retirement keys, on a connection RedisCatalog owns, and
    what this replica has read of them.

    local(): the retirements this replica holds, written back when Redis lost them.
    on_change, on_resync: the store's callbacks (set by `RedisCatalog.start`)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        stream_maxlen: int,
        local: Callable[[], list[Retirement]] | None = None,
    ) -> None:
        self._redis = redis
        self._local = local
        self.on_change: RetirementsCallback | None = None
        self.on_resync: ResyncCallback | None = None
        self.cursor = ORIGIN  # the last stream entry read
        self.seq = 0  # the newest revision delivered
        ns = f"{prefix}:{{retired}}"
        self.state_key, self.seq_key, self.events_key = (
            f"{ns}:state",
            f"{ns}:seq",
            f"{ns}:events",
        )
        self.stream_maxlen = stream_maxlen
        self._retire = redis.register_script(RETIRE_ITEMS_LUA)
        self._reseed = redis.register_script(RESEED_RETIREMENTS_LUA)

    @property
    def _keys(self) -> list[str]:
        return [self.state_key, self.seq_key, self.events_key]

    async def write(self, item_ids: Sequence[str], retired: bool, at: float) -> list[Retirement]:
        """Retire (or restore) the ids, atomically; one Retirement per id, in order."""
        args = ["1" if retired else "0", at, self.stream_maxlen, *item_ids]
        out = await self._retire(keys=self._keys, args=args)
        return [Retirement.from_json(js) for js in out]

    async def read_all(self) -> dict[str, Retirement]:
        stored: dict[str, Retirement] = {}
        async for _key, value in self._redis.hscan_iter(self.state_key, count=1000):
            rec = Retirement.from_json(value)
            stored[rec.id] = rec
        return stored

    async def reseed(self, lost: Sequence[Retirement]) -> None:
        await self._reseed(keys=self._keys, args=[self.stream_maxlen, *(r.to_json() for r in lost)])

    async def newest_seq(self) -> int:
        return int(await self._redis.get(self.seq_key) or 0)

    async def read_after(self, cursor: str, count: int = 1000) -> list[tuple[str, Retirement]]:
        """(entry id, Retirement) of the stream entries after `cursor`, oldest first."""
        entries = await self._redis.xrange(self.events_key, min=f"({cursor}", count=count)
        return [(entry_id.decode(), parse_entry(fields)) for entry_id, fields in entries]

    # --- this replica's copy ---
    async def sync(self, reseed: bool) -> None:
        """Reload every retirement from the hash (after the stream end is noted) and, on a
        (re)connect (reseed), write back those Redis lost."""
        cursor = await stream_end(self._redis, self.events_key)
        stored = await self.read_all()
        if reseed and self._local is not None:
            lost = [r for r in self._local() if r.id not in stored]
            if lost:
                logger.warning("redis lost %d retirements; writing them back", len(lost))
                await self.reseed(lost)
        self.cursor = cursor
        await self._deliver(list(stored.values()))

    async def _deliver(self, changes: list[Retirement]) -> None:
        """Hand over changes read from Redis (the stream or the hash: every revision up to
        the newest, with none missing). The newest revision is noted only once they are
        applied, so `catch_up` never returns before they are."""
        if not changes:
            return
        if self.on_change is not None:
            await self.on_change(sorted(changes, key=lambda r: r.seq))
        self.seq = max(self.seq, max(r.seq for r in changes))

    async def take(self, entries: list) -> None:
        """Deliver entries the tail read from the stream; reload them all when the stream
        was trimmed past what this replica had read (as the store does for items)."""
        if not entries:
            return
        trimmed_to = await trimmed_past(self._redis, self.events_key, self.cursor)
        if trimmed_to is not None:
            logger.warning(
                "retirement stream %s was trimmed past this replica's last-read entry %s "
                "(oldest left: %s): reloading every retirement from redis",
                self.events_key,
                self.cursor,
                trimmed_to,
            )
            if self.on_resync is not None:
                self.on_resync()
            await self.sync(reseed=False)
            return
        self.cursor = entries[-1][0].decode()
        await self._deliver([parse_entry(fields) for _id, fields in entries])

    async def catch_up(self) -> None:
        """One GET of the revision counter; only when this replica is behind it, the
        entries it has not read yet (the tail would bring them a moment later)."""
        if await self.newest_seq() <= self.seq:
            return
        if await trimmed_past(self._redis, self.events_key, self.cursor) is not None:
            await self.sync(reseed=False)
            return
        while True:
            entries = await self.read_after(self.cursor)
            if not entries:
                return
            self.cursor = max(self.cursor, entries[-1][0], key=stream_id)
            await self._deliver([r for _id, r in entries])

    async def apply_written(self, changes: Sequence[Retirement]) -> None:
        """Changes this replica just wrote, applied at once (its next request must not
        return them), but not counted as read: revisions other replicas wrote just before
        may not be in yet."""
        if self.on_change is not None:
            await self.on_change([r for r in changes if r.seq > 0])


def parse_entry(fields: dict[bytes, bytes]) -> Retirement:
    return Retirement.from_json(fields[ENTRY_FIELD])
