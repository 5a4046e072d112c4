"""Embedded mode: a SQLite journal as the durable log of added items on one node.

WAL with synchronous=FULL: an acknowledged item survives a crash. `BEGIN IMMEDIATE`
makes the check-and-assign atomic even across worker processes sharing the file, and a
poll picks up what other processes on the node added (rows with a larger seq). Nothing
is ever trimmed from the journal, so a reader can never fall behind a gap.

Retired items have a table of their own (sqlite_retirements.py), not versioned, followed
by the same poll.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from service.catalog import sqlite_bases, sqlite_retirements
from service.catalog.journal import connect_journal
from service.catalog.placement import Placer
from service.catalog.records import (
    STATUS_ADDED,
    STATUS_REPLACED,
    STATUS_UNCHANGED,
    AddOutcome,
    ItemRecord,
    Retirement,
)
from service.catalog.store import (
    BundleItems,
    CatalogStore,
    RecordsCallback,
    ResyncCallback,
    RetirementsCallback,
    UpCallback,
    item_conflict,
)
from service.errors import StoreUnavailable
from service.tasks import cancel_and_wait

logger = logging.getLogger(__name__)


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
        self._retired_seq = 0  # newest retirement revision delivered
        self._on_retirements: RetirementsCallback | None = None

    @property
    def up(self) -> bool:
        return self._conn is not None

    def _open(self) -> sqlite3.Connection:
        conn = connect_journal(self.path)
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
        conn.executescript(sqlite_retirements.SCHEMA)
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
        bundle_items: BundleItems,
        on_records: RecordsCallback,
        on_up: UpCallback | None = None,
        on_resync: ResyncCallback | None = None,
        on_retirements: RetirementsCallback | None = None,
    ) -> None:
        # The journal is never trimmed: the poll cannot miss rows, so no resync ever.
        del on_resync
        self._conn = await asyncio.to_thread(self._open)
        # Of the bundle only its dedup bases are kept (placement.py); the rest is on disk.
        await asyncio.to_thread(self._load_bases, bundle_items)
        self._on_records = on_records
        self._on_retirements = on_retirements
        await self._deliver(await asyncio.to_thread(self._read_since, 0))
        await self.catch_up_retirements()
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
                await self.catch_up_retirements()
            except Exception:  # keep polling: the next round may succeed
                logger.exception("reading the catalog journal failed")

    def _load_bases(self, bundle_items: BundleItems) -> None:
        assert self._conn is not None
        with self._lock:
            sqlite_bases.load(self._conn, self.version, bundle_items)

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

    def _read_used(self, conn: sqlite3.Connection, key: str) -> int:
        """Dedup ids taken after the base of code sequence `key` (placement.py)."""
        row = conn.execute(
            "SELECT used FROM dedup WHERE version = ? AND prefix = ?", (self.version, key)
        ).fetchone()
        return row[0] if row else 0

    def _add_in_transaction(
        self,
        conn: sqlite3.Connection,
        records: Sequence[ItemRecord],
        replace_: bool,
        dedup_size: int,
    ) -> list[AddOutcome]:
        version = self.version
        plan: list[tuple[ItemRecord, str]] = []
        placer = Placer(
            dedup_size,
            read_used=lambda key: self._read_used(conn, key),
            read_base=lambda key: sqlite_bases.read(conn, version, key),
        )
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
                    raise item_conflict(rec.id, bundle=False)
                status = STATUS_REPLACED
            plan.append((placer.place(rec), status))
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
        for key, n in placer.used.items():
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

    def _retire_sync(self, item_ids: Sequence[str], retired: bool) -> list[Retirement]:
        assert self._conn is not None
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = sqlite_retirements.write(conn, item_ids, retired, round(time.time(), 3))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return out

    async def retire(self, item_ids: Sequence[str], retired: bool) -> list[Retirement]:
        if self._conn is None:
            raise StoreUnavailable("the catalog journal is not open")
        changes = await asyncio.to_thread(self._retire_sync, item_ids, retired)
        # Applied at once, not counted as read: the poll still reads the revisions
        # other processes wrote before it.
        if self._on_retirements is not None:
            await self._on_retirements([r for r in changes if r.seq > 0])
        return changes

    def _retirements_since(self, seq: int) -> list[Retirement]:
        assert self._conn is not None
        with self._lock:
            return sqlite_retirements.read_since(self._conn, seq)

    async def catch_up_retirements(self) -> None:
        """One indexed read of the revisions after the newest delivered (the node's other
        processes write to the same journal)."""
        if self._conn is None:
            return
        changes = await asyncio.to_thread(self._retirements_since, self._retired_seq)
        if not changes:
            return
        if self._on_retirements is not None:
            await self._on_retirements(changes)
        self._retired_seq = max(self._retired_seq, max(r.seq for r in changes))

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
        await cancel_and_wait(self._task)
        self._task = None
        if self._conn is not None:
            with self._lock:
                self._conn.close()
            self._conn = None
