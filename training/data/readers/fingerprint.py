"""The fingerprint of a file-backed source: what the processed-data cache is keyed by."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_HASH_CHUNK = 1 << 20


def fingerprint_files(reader: str, paths: Iterable[Path]) -> str:
    """sha256 (first 16 hex chars) over the reader name and the bytes of each file."""
    digest = hashlib.sha256(reader.encode())
    for path in paths:
        digest.update(b"\0file\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]
