"""Per-user event histories: what POST /events appends and what /recommend reads for a
`user_id`. Bounded per user (the newest `max_events` are kept), ordered by event time,
and idempotent: the same (item, time) twice is one event, so a retried batch does not
count twice. Not replicated: every request reads the store, so every replica sees the
same history.

* `RedisHistories`: one sorted set per user, `{prefix}:history:<user id>`, score = event
  time, member = `<item id>\\0<time>` (item ids hold no control character); ZADD and the
  trim to `max_events` in one MULTI per request.
* `JournalHistories`: a table in the embedded journal's SQLite file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redis import asyncio as aioredis

from service.catalog.journal import connect_journal
from service.catalog.redis_store import CONNECTION_ERRORS
from service.errors import StoreUnavailable


@dataclass(frozen=True)
class UserEvent:
    user_id: str
    item_id: str
    at: float  # unix seconds


class UserHistories(ABC):
    mode: str

    def __init__(self, max_events: int) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.max_events = max_events

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open what the store needs."""

    @abstractmethod
    async def append(self, events: Sequence[UserEvent]) -> None:
        """Add the events (each user's history then cut to its newest max_events).
        StoreUnavailable."""

    @abstractmethod
    async def read(self, user_id: str) -> list[str]:
        """The user's item ids, oldest first ([] for a user with no events).
        StoreUnavailable."""

    @abstractmethod
    async def forget(self, user_id: str) -> int:
        """Delete everything stored about the user; how many events that was."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what start() opened."""


def _by_user(events: Sequence[UserEvent]) -> dict[str, list[UserEvent]]:
    grouped: dict[str, list[UserEvent]] = defaultdict(list)
    for event in events:
        grouped[event.user_id].append(event)
    return grouped


class RedisHistories(UserHistories):
    mode = "redis"

    def __init__(self, url: str, prefix: str, max_events: int) -> None:
        super().__init__(max_events)
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=1.0, retry_on_timeout=False
        )

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:history:{user_id}"

    async def append(self, events: Sequence[UserEvent]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for user_id, mine in _by_user(events).items():
            key = self.key(user_id)
            pipe.zadd(key, {f"{e.item_id}\0{e.at!r}": e.at for e in mine})
            pipe.zremrangebyrank(key, 0, -(self.max_events + 1))
        try:
            await pipe.execute()
        except CONNECTION_ERRORS as e:
            raise StoreUnavailable(f"redis is unreachable: events cannot be stored ({e})") from e

    async def read(self, user_id: str) -> list[str]:
        try:
            members = await self._redis.zrange(self.key(user_id), -self.max_events, -1)
        except CONNECTION_ERRORS as e:
            raise StoreUnavailable(
                f"redis is unreachable: the user's history cannot be read ({e})"
            ) from e
        return [m.decode().split("\0", 1)[0] for m in members]

    async def forget(self, user_id: str) -> int:
        key = self.key(user_id)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.zcard(key)
            pipe.delete(key)
            count, _ = await pipe.execute()
        except CONNECTION_ERRORS as e:
            raise StoreUnavailable(f"redis is unreachable: nothing was deleted ({e})") from e
        return int(count)

    async def close(self) -> None:
        await self._redis.aclose()


class JournalHistories(UserHistories):
    """A table in the embedded journal (its own connection; WAL lets it share the file)."""

    mode = "embedded"

    def __init__(self, path: Path, max_events: int) -> None:
        super().__init__(max_events)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        conn = connect_journal(self.path)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS user_events (user_id TEXT NOT NULL, at REAL NOT NULL, "
            "item_id TEXT NOT NULL, PRIMARY KEY (user_id, at, item_id)) WITHOUT ROWID"
        )
        return conn

    async def start(self) -> None:
        self._conn = await asyncio.to_thread(self._open)

    def _run(self, fn, *args):
        if self._conn is None:
            raise StoreUnavailable("the catalog journal is not open")
        with self._lock:
            return fn(self._conn, *args)

    def _append(self, conn: sqlite3.Connection, events: Sequence[UserEvent]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO user_events (user_id, at, item_id) VALUES (?, ?, ?)",
                [(e.user_id, e.at, e.item_id) for e in events],
            )
            for user_id in _by_user(events):
                # The oldest event kept: everything at or before the one past it goes.
                past = conn.execute(
                    "SELECT at, item_id FROM user_events WHERE user_id = ? "
                    "ORDER BY at DESC, item_id DESC LIMIT 1 OFFSET ?",
                    (user_id, self.max_events),
                ).fetchone()
                if past is not None:
                    conn.execute(
                        "DELETE FROM user_events WHERE user_id = ? AND "
                        "(at < ? OR (at = ? AND item_id <= ?))",
                        (user_id, past[0], past[0], past[1]),
                    )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _read(conn: sqlite3.Connection, user_id: str, limit: int) -> list[str]:
        rows = conn.execute(
            "SELECT item_id FROM user_events WHERE user_id = ? ORDER BY at DESC, item_id DESC "
            "LIMIT ?",
            (user_id, limit),
        ).fetchall()
        return [r[0] for r in reversed(rows)]

    @staticmethod
    def _forget(conn: sqlite3.Connection, user_id: str) -> int:
        return conn.execute("DELETE FROM user_events WHERE user_id = ?", (user_id,)).rowcount

    async def append(self, events: Sequence[UserEvent]) -> None:
        await asyncio.to_thread(self._run, self._append, events)

    async def read(self, user_id: str) -> list[str]:
        return await asyncio.to_thread(self._run, self._read, user_id, self.max_events)

    async def forget(self, user_id: str) -> int:
        return await asyncio.to_thread(self._run, self._forget, user_id)

    async def close(self) -> None:
        if self._conn is not None:
            with self._lock:
                self._conn.close()
            self._conn = None
