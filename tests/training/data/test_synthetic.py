"""Tests of the synthetic generator: determinism, sizes, long tail, time and topic structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import synthetic
from training.data.schema import INTERACTION_COLUMNS, ITEM_TEXT_COLUMNS, RawDataset
from training.data.synthetic import SyntheticConfig, config_fingerprint, generate_synthetic

CONFIG = SyntheticConfig(n_items=3_000, n_interactions=60_000, seed=7)


@pytest.fixture(scope="module")
def dataset() -> RawDataset:
    return generate_synthetic(CONFIG)


def _item_topics(ds: RawDataset) -> np.ndarray:
    """Topic of each item (indexed by item id): the first part of `categories`."""
    return ds.items["categories"].str.split(", ").str[0].to_numpy()


def _same_user_next(ds: RawDataset) -> np.ndarray:
    users = ds.interactions["user_id"].to_numpy()
    return users[1:] == users[:-1]


def test_schema_and_dtypes(dataset: RawDataset) -> None:
    assert dataset.name == "synthetic-3000"
    assert tuple(dataset.interactions.columns) == INTERACTION_COLUMNS
    assert all(dataset.interactions[c].dtype == np.int64 for c in INTERACTION_COLUMNS)
    items = dataset.items
    assert items["item_id"].dtype == np.int64
    assert items["introduced_at"].dtype == np.int64
    assert np.array_equal(items["item_id"].to_numpy(), np.arange(CONFIG.n_items))
    for column in ITEM_TEXT_COLUMNS:
        assert items[column].notna().all()
        assert all(isinstance(v, str) for v in items[column].head(50))
    assert (items["title"].str.len() > 0).all()
    empty_brand = (items["brand"] == "").mean()
    assert 0.0 < empty_brand < 3 * CONFIG.missing_text_fraction
    years = items.loc[items["year"] != "", "year"].astype(int)
    assert years.between(2009, 2023).all()


def test_deterministic(dataset: RawDataset) -> None:
    again = generate_synthetic(CONFIG)
    pd.testing.assert_frame_equal(dataset.interactions, again.interactions)
    pd.testing.assert_frame_equal(dataset.items, again.items)
    assert dataset.fingerprint == again.fingerprint

    other = generate_synthetic(SyntheticConfig(n_items=3_000, n_interactions=60_000, seed=8))
    assert not dataset.interactions.equals(other.interactions)
    assert not dataset.items["title"].equals(other.items["title"])
    assert dataset.fingerprint != other.fingerprint


def test_fingerprint_tracks_generator_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = config_fingerprint(CONFIG)
    assert len(before) == 64
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + "-next")
    assert config_fingerprint(CONFIG) != before


def test_sizes(dataset: RawDataset) -> None:
    interactions = dataset.interactions
    assert len(interactions) == CONFIG.n_interactions  # exact, so well within 1%
    assert set(np.unique(interactions["item_id"])) <= set(dataset.items["item_id"])
    lengths = interactions.groupby("user_id").size()
    assert len(lengths) == CONFIG.resolved_n_users() == 3_000
    assert lengths.min() >= CONFIG.min_seq_len
    assert lengths.max() <= CONFIG.max_seq_len
    assert lengths.max() > 5 * lengths.median()  # a heavy-ish tail of long users


def test_exact_length_split_with_explicit_users() -> None:
    # 100 users x at most 12 interactions = 1200: every user must get exactly 12.
    config = SyntheticConfig(
        n_items=200, n_interactions=1_200, n_users=100, mean_seq_len=10, max_seq_len=12
    )
    lengths = generate_synthetic(config).interactions.groupby("user_id").size()
    assert len(lengths) == 100 and (lengths == 12).all()


def test_rows_grouped_by_user_and_time_non_decreasing(dataset: RawDataset) -> None:
    users = dataset.interactions["user_id"].to_numpy()
    times = dataset.interactions["timestamp"].to_numpy()
    assert (np.diff(users) >= 0).all()
    same = _same_user_next(dataset)
    assert (np.diff(times)[same] >= 0).all()
    assert times.min() >= CONFIG.start_timestamp
    assert times.max() < CONFIG.start_timestamp + CONFIG.time_span_seconds


def test_long_tail(dataset: RawDataset) -> None:
    counts = np.bincount(dataset.interactions["item_id"], minlength=CONFIG.n_items)
    ranked = np.sort(counts)[::-1]
    top_share = ranked[: CONFIG.n_items // 5].sum() / ranked.sum()
    assert top_share > 0.6
    # Zipf-like: log(count) falls roughly linearly in log(rank) over the head.
    ranks = np.arange(1, len(ranked) + 1)
    head = slice(4, 300)
    slope = np.polyfit(np.log(ranks[head]), np.log(ranked[head]), 1)[0]
    assert -1.5 < slope < -0.6
    assert ranked[0] > 20 * np.median(ranked)


def test_no_item_before_its_introduction(dataset: RawDataset) -> None:
    introduced = dataset.items["introduced_at"].to_numpy()
    start = CONFIG.start_timestamp
    new_share = (introduced > start).mean()
    assert CONFIG.new_item_fraction - 0.05 < new_share <= CONFIG.new_item_fraction + 0.03
    items = dataset.interactions["item_id"].to_numpy()
    times = dataset.interactions["timestamp"].to_numpy()
    assert (times >= introduced[items]).all()
    # New items do get consumed (after their introduction).
    assert (introduced[items] > start).mean() > 0.05


def test_consecutive_items_share_topics(dataset: RawDataset) -> None:
    topics = _item_topics(dataset)[dataset.interactions["item_id"].to_numpy()]
    same = _same_user_next(dataset)
    same_topic = (topics[1:] == topics[:-1])[same].mean()
    _, counts = np.unique(topics, return_counts=True)
    chance = ((counts / counts.sum()) ** 2).sum()
    assert same_topic > CONFIG.topic_stickiness
    assert same_topic > 5 * chance
    items = dataset.interactions["item_id"].to_numpy()
    assert (items[1:] == items[:-1])[same].mean() < 0.01  # consecutive repeats are rare


def test_titles_share_words_within_topics(dataset: RawDataset) -> None:
    topics = _item_topics(dataset)
    words = [set(t.lower().split()) for t in dataset.items["title"]]
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, CONFIG.n_items, (2, 20_000))

    def overlap(mask: np.ndarray) -> float:
        pairs = zip(left[mask].tolist(), right[mask].tolist(), strict=True)
        return float(np.mean([bool(words[a] & words[b]) for a, b in pairs if a != b]))

    same = topics[left] == topics[right]
    assert same.sum() > 200
    within, across = overlap(same), overlap(~same)
    assert within > 0.2
    assert within > 4 * across


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_items": 0},
        {"topic_stickiness": 1.5},
        {"min_seq_len": 30},  # above mean_seq_len
        {"n_users": 10},  # 10 users x 500 < 200k interactions
        {"n_topics": 20_000},  # more topics than items
    ],
)
def test_invalid_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**kwargs)
