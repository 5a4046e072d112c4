"""Item attributes for filters: categories as the readers give them, the bundle's CSR of
them (written, read back, and absent in bundles from before them), and the allowed-row
masks a filter makes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest

from models.bundle import load_bundle, write_bundle
from models.item_attributes import ItemAttributes, RowFilter, encode_categories, split_categories
from tests.bundle_factory import tiny_categories, tiny_contents


def test_split_categories():
    assert split_categories("Action, Comedy,, comedy ") == ("Action", "Comedy")
    assert split_categories(["Sci-Fi", " Drama "]) == ("Sci-Fi", "Drama")
    assert split_categories(None) == () and split_categories(3) == ()


def test_encode_categories_is_a_csr_with_case_folded_names():
    names, ptr, ids = encode_categories(["", "Action, Comedy", ["comedy"], None, "Drama"])
    assert names.tolist() == ["Action", "Comedy", "Drama"]
    assert ptr.tolist() == [0, 0, 2, 3, 3, 4]
    assert [names[ids[ptr[r] : ptr[r + 1]]].tolist() for r in range(5)] == [
        [],
        ["Action", "Comedy"],
        ["Comedy"],
        [],
        ["Drama"],
    ]


def make_attributes() -> ItemAttributes:
    names, ptr, ids = encode_categories(["", "A", "A, B", "B", "", "C"])  # rows 0..5
    return ItemAttributes(names, ptr, ids, bundle_added_at=1000.0)


def test_masks_of_every_rule_and_added_rows():
    attrs = make_attributes()
    attrs.add(np.array([6, 7]), [["b", "New"], ()], [2000.0, 3000.0])
    assert attrs.n_rows == 8
    allowed = lambda **rule: np.flatnonzero(attrs.allowed(RowFilter(**rule))).tolist()  # noqa: E731
    assert allowed() == list(range(1, 8))  # row 0 (padding) never
    assert allowed(categories=("b",)) == [2, 3, 6]
    assert allowed(categories=("a", "new", "unknown")) == [1, 2, 6]
    assert allowed(categories=()) == []
    assert allowed(include_rows=np.array([5, 6, 0, 99])) == [5, 6]
    assert allowed(exclude_rows=np.array([1, 2])) == [3, 4, 5, 6, 7]
    assert allowed(added_after=2000.0) == [6, 7]  # [after, before): after inclusive
    assert allowed(added_before=2000.0) == [1, 2, 3, 4, 5]
    assert allowed(added_after=1500.0, added_before=3000.0, categories=("B",)) == [6]
    # An item's categories in its own order, spelt as the catalogue first spelt them.
    assert attrs.categories_of(2) == ["A", "B"] and attrs.categories_of(6) == ["B", "New"]
    assert attrs.categories_of(4) == [] and attrs.categories_of(7) == []
    assert attrs.categories_of(0) == [] and attrs.categories_of(99) == []
    with pytest.raises(ValueError, match="continue the catalogue from row 8"):
        attrs.add(np.array([9]), [()], [1.0])


def test_an_allowlist_rule_lists_the_rows_its_mask_allows():
    """The list form (what a short allowlist reaches the decoder as) allows exactly the
    mask's rows, whatever the rule's other criteria; repeats and unknown rows dropped."""
    attrs = make_attributes()
    attrs.add(np.array([6, 7]), [["b", "New"], ()], [2000.0, 3000.0])
    include = np.array([7, 2, 6, 3, 2, 0, 99, 1])
    rules = [
        RowFilter(include_rows=include),
        RowFilter(include_rows=include, exclude_rows=np.array([3, 7])),
        RowFilter(include_rows=include, categories=("b", "new")),
        RowFilter(include_rows=include, added_after=1500.0, added_before=3000.0),
        RowFilter(include_rows=np.zeros(0, dtype=np.int64)),
    ]
    for rule in rules:
        listed = attrs.allowed_list(rule)
        assert listed.dtype == np.int64
        assert listed.tolist() == np.flatnonzero(attrs.allowed(rule)).tolist()
    assert attrs.allowed_list(rules[2]).tolist() == [2, 3, 6]
    with pytest.raises(ValueError, match="include_rows"):
        attrs.allowed_list(RowFilter(categories=("a",)))


def test_bundle_keeps_categories_and_old_bundles_read_as_none(tmp_path):
    contents = tiny_contents(n_items=20)
    path = write_bundle(tmp_path / "new", contents, now=datetime.now(timezone.utc))
    bundle = load_bundle(path)
    names, ptr, ids = bundle.category_names, bundle.category_ptr, bundle.category_ids
    got = [sorted(names[ids[ptr[r] : ptr[r + 1]]].tolist()) for r in range(21)]
    assert got == [sorted(c) for c in tiny_categories(20)]
    # A bundle written without categories (as before they existed) loads, with none.
    old = replace(contents, category_names=None, category_ptr=None, category_ids=None)
    bundle = load_bundle(write_bundle(tmp_path / "old", old, now=datetime.now(timezone.utc)))
    assert bundle.category_ptr is None and bundle.category_names is None
