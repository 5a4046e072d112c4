"""On-disk cache of processed datasets, keyed by the source's fingerprint and the config.

A cache entry is a directory `<cache_dir>/<name>-<key>/` holding `arrays.npz`,
`items.csv` and `meta.json`. It is written to a temporary directory and renamed into
place, so an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.preprocess import PreprocessConfig, ProcessedDataset, Sequences
from training.data.schema import ITEM_TEXT_COLUMNS

logger = logging.getLogger(__name__)

# Bump when preprocessing changes meaning, so old entries are not reused.
PREPROCESS_VERSION = 1


def cache_key(source_fingerprint: str, config: PreprocessConfig) -> str:
    payload = json.dumps(
        {"source": source_fingerprint, "config": config.to_dict(), "v": PREPROCESS_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def entry_dir(cache_dir: Path, name: str, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(cache_dir) / f"{safe}-{key}"


def save(dataset: ProcessedDataset, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        np.savez(
            tmp / "arrays.npz",
            offsets=dataset.sequences.offsets,
            items=dataset.sequences.items,
            timestamps=dataset.timestamps,
            cold_holdout=dataset.cold_holdout,
            user_ids=dataset.user_ids.astype(str),
        )
        dataset.items.to_csv(tmp / "items.csv", index=False)
        meta = {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "config": dataset.config.to_dict(),
            "version": PREPROCESS_VERSION,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load(path: Path) -> ProcessedDataset:
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    arrays = np.load(path / "arrays.npz")
    items = pd.read_csv(
        path / "items.csv", dtype=str, keep_default_na=False, na_filter=False
    ).reindex(columns=["item_id", *ITEM_TEXT_COLUMNS], fill_value="")
    return ProcessedDataset(
        name=meta["name"],
        fingerprint=meta["fingerprint"],
        config=PreprocessConfig(**meta["config"]),
        item_ids=items["item_id"].to_numpy(dtype=str),
        user_ids=arrays["user_ids"],
        items=items,
        sequences=Sequences(arrays["offsets"], arrays["items"]),
        timestamps=arrays["timestamps"],
        cold_holdout=arrays["cold_holdout"],
    )
