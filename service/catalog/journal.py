"""The embedded journal's SQLite connection, opened the same way by every table on it
(items, retirements, bundle bases, user histories): one file shared by the processes of
one host, so WAL (readers never block the writer), full sync (an acknowledged write is on
disk) and a generous busy timeout (another process may hold the write lock)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_journal(path: Path) -> sqlite3.Connection:
    """An autocommit connection to the journal at `path` (created with its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn
