"""Semantic item embeddings: each item's text description through the sentence encoder.

Row i of the result belongs to internal item id i; row 0 (padding) is all zeros. The
result is cached on disk, keyed by the encoder's model id and every item's text, so a
rerun costs a file read and any change to the text or the model recomputes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.text_encoder import TEXT_FIELDS, TextEncoder, item_description

logger = logging.getLogger(__name__)

_KEY_VERSION = b"text-emb-v1"  # bump when the file layout or description format changes


def item_texts(items: pd.DataFrame) -> list[str]:
    """item_description of every row of a ProcessedDataset.items table, in row order.

    Text columns the table lacks count as empty.
    """
    columns = [c for c in TEXT_FIELDS if c in items.columns]
    return [item_description(row) for row in items[columns].to_dict("records")]


def cache_key(model_id: str, texts: list[str]) -> str:
    """sha256 over the model id and every text (length-prefixed, so unambiguous)."""
    h = hashlib.sha256(_KEY_VERSION)
    for part in (model_id, *texts):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _load_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable text embedding cache %s: %s", path, e)
        return None
    if emb.shape != shape or emb.dtype != np.float32:
        logger.warning(
            "ignoring text embedding cache %s: %s %s, expected %s float32",
            path, emb.shape, emb.dtype, shape,
        )  # fmt: skip
        return None
    return emb


def _save_atomic(path: Path, emb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, emb, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def semantic_embeddings(
    items: pd.DataFrame,
    encoder: TextEncoder,
    cache_dir: Path | None,
    progress: bool = True,
) -> np.ndarray:
    """(N + 1, dim) float32 item embeddings (dim = 384 for MiniLM), row 0 (padding) zeros.

    `items` is ProcessedDataset.items: row i = internal item id i, row 0 = padding. Rows
    1..N are unit vectors; an item without any text gets the embedding of "".
    Cached at cache_dir / f"text-emb-{key}.npy" with key = cache_key(encoder.model_id,
    texts of rows 1..N); the file is written atomically (temp file + os.replace), so
    concurrent runs never see half a file. cache_dir None disables the cache.
    """
    if len(items) < 1:
        raise ValueError("items must hold at least the padding row 0")
    texts = item_texts(items)[1:]
    shape = (len(texts) + 1, encoder.dim)

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"text-emb-{cache_key(encoder.model_id, texts)}.npy"
        if path.exists():
            emb = _load_cached(path, shape)
            if emb is not None:
                logger.info("text embeddings: cache hit %s (%d items)", path, len(texts))
                return emb
        logger.info("text embeddings: cache miss %s", path)

    emb = np.zeros(shape, dtype=np.float32)
    if texts:
        start = time.perf_counter()
        emb[1:] = encoder.encode(texts, progress=progress)
        seconds = time.perf_counter() - start
        logger.info(
            "text embeddings: encoded %d items with %s in %.1f s (%.0f items/s)",
            len(texts), encoder.model_id, seconds, len(texts) / max(seconds, 1e-9),
        )  # fmt: skip
    if path is not None:
        _save_atomic(path, emb)
        logger.info("text embeddings: wrote %s", path)
    return emb
