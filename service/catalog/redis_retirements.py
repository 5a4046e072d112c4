"""Retired items in Redis: the keys, the two scripts and the reads `RedisCatalog` uses to
replicate them beside the added items (the same tail, the same catch-up on reconnect,
the same resync after a trimmed stream).

Retirements are keyed by external id, not by bundle version, so every version served
(two at once during a swap, or replicas not yet switched) reads the same set:

  {prefix}:{retired}:state   hash  id -> Retirement JSON (retired or restored; never deleted)
  {prefix}:{retired}:seq     int   revision counter
  {prefix}:{retired}:events  stream of `retirement` entries, trimmed to about maxlen

(`retired` has no '-', so it is never a bundle version: those are
`<dataset>-<time>-<hash>`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from redis import asyncio as aioredis

from service.catalog.records import Retirement

RETIRE_ITEMS_LUA = resources.files(__package__).joinpath("retire_items.lua").read_text("utf-8")
RESEED_RETIREMENTS_LUA = (
    resources.files(__package__).joinpath("reseed_retirements.lua").read_text("utf-8")
)
ENTRY_FIELD = b"retirement"


class RedisRetirements:
    """Reads and writes of the retirement keys, on a connection RedisCatalog owns."""

    def __init__(self, redis: aioredis.Redis, prefix: str, stream_maxlen: int) -> None:
        self._redis = redis
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


def parse_entry(fields: dict[bytes, bytes]) -> Retirement:
    return Retirement.from_json(fields[ENTRY_FIELD])
