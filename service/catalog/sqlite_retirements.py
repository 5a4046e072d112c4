"""Retired items in the embedded journal: one table, not versioned (retiring is a fact
about the catalogue, shared by every bundle version), read and written by `LocalCatalog`
on its connection and under its lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from service.catalog.records import Retirement

SCHEMA = """
CREATE TABLE IF NOT EXISTS retired (
    id TEXT PRIMARY KEY, retired INTEGER NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS retired_seq ON retired (seq);
"""


def _row(row: tuple) -> Retirement:
    return Retirement(id=row[0], retired=bool(row[1]), seq=int(row[2]), at=float(row[3]))


def write(
    conn: sqlite3.Connection, item_ids: Sequence[str], retired: bool, at: float
) -> list[Retirement]:
    """Inside the caller's write transaction: ids already in the asked state are left as
    they are; the others get the next revision. One Retirement per id, in order."""
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM retired").fetchone()[0]
    out = []
    for item_id in item_ids:
        row = conn.execute(
            "SELECT id, retired, seq, at FROM retired WHERE id = ?", (item_id,)
        ).fetchone()
        held = _row(row) if row else Retirement(item_id, retired=False)
        if held.retired == retired:
            out.append(held)
            continue
        seq += 1
        change = Retirement(item_id, retired, seq, at)
        conn.execute(
            "INSERT OR REPLACE INTO retired (id, retired, seq, at) VALUES (?, ?, ?, ?)",
            (item_id, int(retired), seq, at),
        )
        out.append(change)
    return out


def read_since(conn: sqlite3.Connection, seq: int) -> list[Retirement]:
    rows = conn.execute(
        "SELECT id, retired, seq, at FROM retired WHERE seq > ? ORDER BY seq", (seq,)
    ).fetchall()
    return [_row(r) for r in rows]
