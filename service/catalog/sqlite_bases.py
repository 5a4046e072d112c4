"""The embedded journal's table of the bundle's dedup bases (placement.py): where the dedup
ids of a code sequence start, for the sequences a new item may be placed under.

Written once per bundle version, by the first process to start on it, in one
transaction; read one sequence at a time while placing (an indexed lookup).
"""

from __future__ import annotations

import sqlite3

from service.catalog.placement import bundle_bases
from service.catalog.store import BundleItems

SCHEMA = """
CREATE TABLE IF NOT EXISTS bundle_bases (
    version TEXT NOT NULL, prefix TEXT NOT NULL, base INTEGER NOT NULL,
    PRIMARY KEY (version, prefix));
CREATE TABLE IF NOT EXISTS bundle_bases_loaded (version TEXT PRIMARY KEY);
"""


def load(conn: sqlite3.Connection, version: str, bundle_items: BundleItems) -> None:
    """Write the bases of `version` unless they are there already (call with the
    connection's lock held, outside a transaction)."""
    conn.executescript(SCHEMA)
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = conn.execute(
            "SELECT 1 FROM bundle_bases_loaded WHERE version = ?", (version,)
        ).fetchone()
        if done is None:
            conn.executemany(
                "INSERT OR REPLACE INTO bundle_bases (version, prefix, base) VALUES (?, ?, ?)",
                ((version, key, base) for key, base in bundle_bases(bundle_items)),
            )
            conn.execute("INSERT INTO bundle_bases_loaded (version) VALUES (?)", (version,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read(conn: sqlite3.Connection, version: str, key: str) -> int:
    """The bundle's base of code sequence `key` (0 where no bundle item has it)."""
    row = conn.execute(
        "SELECT base FROM bundle_bases WHERE version = ? AND prefix = ?", (version, key)
    ).fetchone()
    return int(row[0]) if row else 0
