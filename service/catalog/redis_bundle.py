"""What the Redis store loads from the bundle, once per bundle version: the bundle's
items into the item cache (item_cache.py; add_items.lua refuses their ids) and the
dedup base of every code prefix they use (placement.py). Each load ends by setting its
marker key, so a replica starting after another skips it, and a load cut short is done
again."""

from __future__ import annotations

import asyncio
import logging
import time

from redis import asyncio as aioredis

from service.catalog.placement import bundle_bases
from service.catalog.store import BundleItems

logger = logging.getLogger(__name__)

CHUNK = 5000  # hash fields per HSET: big enough to pipeline, small enough not to block Redis


async def load_items(
    redis: aioredis.Redis, items_key: str, marker: str, bundle_items: BundleItems
) -> None:
    """The bundle's item cache entries into the `items` hash."""
    if await redis.exists(marker):
        return
    started, count, chunk = time.perf_counter(), 0, {}
    for item_id, value in bundle_items():
        chunk[item_id] = value
        if len(chunk) >= CHUNK:
            await redis.hset(items_key, mapping=chunk)
            count, chunk = count + len(chunk), {}
    if chunk:
        await redis.hset(items_key, mapping=chunk)
        count += len(chunk)
    await redis.set(marker, str(count))
    logger.info("loaded %d bundle items into redis in %.1f s", count, time.perf_counter() - started)


async def load_bases(
    redis: aioredis.Redis, bases_key: str, marker: str, bundle_items: BundleItems
) -> None:
    """The bundle's dedup bases into the `bases` hash. The marker goes last:
    add_items.lua refuses to place anything without it."""
    if await redis.exists(marker):
        return
    started = time.perf_counter()
    # Parsed off the event loop: a large bundle takes seconds, /recommend goes on.
    bases = await asyncio.to_thread(lambda: list(bundle_bases(bundle_items)))
    for lo in range(0, len(bases), CHUNK):
        await redis.hset(bases_key, mapping=dict(bases[lo : lo + CHUNK]))
    await redis.set(marker, str(len(bases)))
    logger.info(
        "loaded the dedup bases of %d code prefixes into redis in %.1f s",
        len(bases),
        time.perf_counter() - started,
    )
