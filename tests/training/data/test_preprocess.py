import numpy as np
import pandas as pd
import pytest

from training.data import cache, load_dataset
from training.data.preprocess import (
    COLD,
    HEAD,
    TAIL,
    EmptyDatasetError,
    PreprocessConfig,
    Sequences,
    k_core,
    preprocess,
)
from training.data.schema import RawDataset
from training.data.synthetic import SyntheticConfig


def raw(rows, items=None, name="toy"):
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = items if items is not None else pd.DataFrame({"item_id": sorted({r[1] for r in rows})})
    return RawDataset(name=name, interactions=inter, items=items, fingerprint="fp")


def chain(user, items, t0=0, step=10):
    return [(user, item, t0 + i * step) for i, item in enumerate(items)]


def test_k_core_iterates_to_a_fixed_point():
    # user 2 has 2 interactions; dropping it leaves item "c" with 1, which must go too,
    # and then user 1 falls to 2 -> gone as well. Only the dense block survives.
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    items = np.array([0, 1, 2, 0, 1, 3, 3, 0])
    keep = k_core(users, items, k=2)
    assert keep.tolist() == [True, True, False, True, True, True, True, True]
    assert k_core(users, items, k=3).sum() == 0


def test_ties_keep_source_order_and_split_is_leave_one_out():
    # All of user u1's rows share one timestamp: the source order must decide.
    rows = [("u1", i, 100) for i in ["a", "b", "c", "d", "e"]]
    rows += chain("u2", ["e", "d", "c", "b", "a"])
    ds = preprocess(raw(rows), PreprocessConfig(k_core=1))
    ids = list(ds.item_ids)
    u1 = ds.user_ids.tolist().index("u1")
    assert [ids[i] for i in ds.sequences[u1]] == ["a", "b", "c", "d", "e"]

    test, valid, train = ds.test(), ds.validation(), ds.train_sequences()
    assert ids[test.targets[u1]] == "e"
    assert [ids[i] for i in test.history[u1]] == ["a", "b", "c", "d"]
    assert ids[valid.targets[u1]] == "d"
    assert [ids[i] for i in train[u1]] == ["a", "b", "c"]
    # held back: the validation history then ends with an item training never saw there
    assert [ids[i] for i in ds.train_sequences(held_back=1)[u1]] == ["a", "b"]


def test_ids_are_contiguous_with_zero_as_padding():
    rows = chain("u1", ["x", "y", "z"]) + chain("u2", ["z", "y", "x"])
    ds = preprocess(raw(rows), PreprocessConfig(k_core=1))
    assert ds.item_ids[0] == ""
    assert sorted(ds.sequences.items.tolist()) == [1, 1, 2, 2, 3, 3]
    assert ds.items["item_id"].tolist() == list(ds.item_ids)


def test_cold_holdout_removes_newest_items_from_training_but_keeps_them_as_targets():
    rows = []
    for u in range(6):
        rows += chain(f"u{u}", ["a", "b", "c", "d", "e"], t0=u)
    rows += [("u0", "new", 10_000), ("u1", "new", 10_001)]
    ds = preprocess(raw(rows), PreprocessConfig(k_core=1, cold_item_fraction=1 / 6))
    new = list(ds.item_ids).index("new")
    assert ds.cold_holdout[new]
    assert new not in ds.train_sequences().items
    test = ds.test()
    assert new not in test.history.items
    assert (test.targets == new).sum() == 2
    assert ds.item_groups()[new] == COLD
    assert new not in ds.validation().targets


def test_groups_split_warm_items_twenty_eighty_by_training_count():
    rows = []
    # item i appears in the training part of (10 - i) users' sequences
    for u in range(10):
        rows += chain(f"u{u}", [f"i{i}" for i in range(10 - u)] + ["v", "t"], t0=u)
    ds = preprocess(raw(rows), PreprocessConfig(k_core=1))
    groups = ds.item_groups()
    counts = ds.train_counts()
    warm = np.flatnonzero(counts > 0)
    assert (groups[warm] == HEAD).sum() == 2  # ceil(0.2 * 10)
    head_min = counts[groups == HEAD].min()
    assert head_min >= counts[groups == TAIL].max()
    v, t = list(ds.item_ids).index("v"), list(ds.item_ids).index("t")
    assert groups[v] == COLD and groups[t] == COLD  # only ever validation/test targets


def test_empty_after_filter_is_a_clear_error():
    with pytest.raises(EmptyDatasetError, match="5-core"):
        preprocess(raw(chain("u1", ["a", "b"])), PreprocessConfig(k_core=5))


def test_sequences_last_and_select():
    seq = Sequences(np.array([0, 3, 3, 5]), np.array([1, 2, 3, 4, 5]))
    assert seq.last(2).tolist() == [[2, 3], [0, 0], [4, 5]]
    assert seq.last(4).tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 4, 5]]
    sub = seq.select(np.array([2, 0]))
    assert sub[0].tolist() == [4, 5] and sub[1].tolist() == [1, 2, 3]


def test_cache_round_trip_and_hit(tmp_path):
    config = SyntheticConfig(n_items=300, n_interactions=6000, seed=3)
    first = load_dataset("synthetic", PreprocessConfig(), config, tmp_path)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1
    again = cache.load(entries[0])
    assert np.array_equal(first.sequences.items, again.sequences.items)
    assert np.array_equal(first.sequences.offsets, again.sequences.offsets)
    assert np.array_equal(first.cold_holdout, again.cold_holdout)
    assert first.items.equals(again.items)
    assert list(first.item_ids) == list(again.item_ids)
    # A different config is a different entry.
    load_dataset("synthetic", PreprocessConfig(k_core=3), config, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_movielens_100k_matches_the_protocol_figures(tmp_path):
    pytest.importorskip("numpy")
    from importlib.util import find_spec

    if find_spec("recbole") is None:
        pytest.skip("recbole (MovieLens-100K) not installed")
    ds = load_dataset("ml-100k", cache_dir=None)
    # METHOD.md: 5-core MovieLens-100K has 943 users, 1,349 items, 99,287 interactions.
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1349, 99287)
