"""Reading Redis streams that are trimmed: entry ids as ordered pairs, a stream's end,
and whether entries a replica had not read yet were trimmed away (which forces it to
reload the authoritative hash instead). Shared by the added items' stream
(redis_store.py) and the retirements' (redis_retirements.py)."""

from __future__ import annotations

from redis import asyncio as aioredis
from redis.exceptions import ResponseError

ORIGIN = "0-0"  # the cursor before the first entry of a stream that does not exist yet
# An error reply: the server is up but refused the command (e.g. XINFO of a missing key).
REPLY_ERRORS = (ResponseError,)


def stream_id(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id ('<ms>-<n>') as a pair that orders like the ids themselves."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, n = text.partition("-")
    return int(ms), int(n or 0)


async def stream_end(redis: aioredis.Redis, key: str) -> str:
    """The id of the stream's newest entry (ORIGIN when there is no stream yet). Read
    BEFORE the hash the stream mirrors: whatever is written after it arrives on the
    stream."""
    last = await redis.xrevrange(key, count=1)
    return last[0][0].decode() if last else ORIGIN


async def trimmed_past(redis: aioredis.Redis, key: str, cursor: str) -> str | None:
    """The oldest entry left in the stream when entries after the cursor may have been
    trimmed before this replica read them, else None.

    Trimming removes the oldest entries, so nothing past the cursor is gone while the
    oldest entry left is at or before it. When the cursor entry itself is gone, the
    replica is about `stream_maxlen` entries behind and cannot tell whether anything
    between was lost: that counts as a gap (a resync too many costs one reload; one
    too few loses items). A cursor at ORIGIN (no stream at the last sync) has lost
    nothing while the stream has never been trimmed (Redis >= 7: entries-added)."""
    try:
        info = await redis.xinfo_stream(key)
    except REPLY_ERRORS as e:  # "no such key": the stream vanished under us
        return f"(no stream: {e})"
    first = info.get("first-entry")
    if not first:
        return "(empty stream)"
    oldest = first[0].decode() if isinstance(first[0], bytes) else str(first[0])
    if stream_id(oldest) <= stream_id(cursor):
        return None
    added = info.get("entries-added")
    if cursor == ORIGIN and added is not None and int(added) == int(info["length"]):
        return None
    return oldest
