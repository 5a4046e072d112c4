"""Data layer: readers -> RawDataset -> preprocess -> ProcessedDataset (cached on disk).

`load_dataset` is the one entry point the stages and the CLI use.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.data import cache
from training.data.preprocess import PreprocessConfig, ProcessedDataset, preprocess
from training.data.readers import EventColumns, load_raw_dataset
from training.data.schema import RawDataset
from training.data.synthetic import SyntheticConfig, config_fingerprint, generate_synthetic

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("artifacts/cache")


def load_dataset(
    spec: str,
    preprocess_config: PreprocessConfig | None = None,
    synthetic: SyntheticConfig | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    columns: EventColumns | None = None,
    item_table: Path | None = None,
) -> ProcessedDataset:
    """A processed dataset from a spec: "ml-100k", "synthetic" (sized by `synthetic`),
    or a path to RecBole atomic files, Amazon review/metadata JSON lines or a Parquet/CSV
    event log (its column mapping `columns`, its optional `item_table`).

    The processed result is cached under `cache_dir` (None disables the cache), keyed
    by the source's fingerprint and the preprocessing config. The synthetic source is
    keyed by its config, so a cache hit skips generation too; file sources are parsed
    and hashed each time (seconds for millions of rows), and the cache saves the
    filtering and splitting.
    """
    preprocess_config = preprocess_config or PreprocessConfig()
    raw: RawDataset | None = None
    if spec.strip().lower() == "synthetic":
        synthetic = synthetic or SyntheticConfig()
        name, fingerprint = f"synthetic-{synthetic.n_items}", config_fingerprint(synthetic)
    else:
        raw = load_raw_dataset(spec, columns, item_table)
        name, fingerprint = raw.name, raw.fingerprint

    entry = None
    if cache_dir is not None:
        entry = cache.entry_dir(cache_dir, name, cache.cache_key(fingerprint, preprocess_config))
        if (entry / "meta.json").exists():
            logger.info("processed %s from cache %s", name, entry)
            return cache.load(entry)
    if raw is None:
        raw = generate_synthetic(synthetic)
    dataset = preprocess(raw, preprocess_config)
    if entry is not None:
        cache.save(dataset, entry)
    return dataset


__all__ = [
    "EventColumns",
    "PreprocessConfig",
    "ProcessedDataset",
    "SyntheticConfig",
    "load_dataset",
]
