"""Tests of the prefix index builder, its device tables and the overlay."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.device_index import narrow_int
from models.overlay_index import OverlayIndex
from models.path_tables import build_path_tables
from models.prefix_index import PrefixIndex, build_prefix_index
from models.tokens import TokenLayout, item_tokens


def random_catalog(seed: int, n: int = 200, depth: int = 4, vocab: int = 40):
    """(rows (N', depth), ids (N',), vocab): unique random rows with shared prefixes (few
    tokens per position), shuffled, with random distinct item ids."""
    rng = np.random.default_rng(seed)
    span = (vocab - 3) // depth
    rows = 3 + span * np.arange(depth) + rng.integers(0, rng.integers(2, span + 1), (n, depth))
    rows = rng.permutation(np.unique(rows, axis=0))
    ids = rng.permutation(10 * n)[: rows.shape[0]]
    return rows, ids, vocab


def walk(index: PrefixIndex, row: np.ndarray) -> int:
    """Item id of one row by a plain CSR walk (-1 if absent)."""
    node = 0
    for k, token in enumerate(row):
        lo, hi = index.row_ptr[node], index.row_ptr[node + 1]
        hit = np.flatnonzero(index.child_token[lo:hi] == token)
        if hit.size == 0:
            return -1
        node = int(index.child_node[lo + hit[0]])
        if k == index.depth - 1:
            return node
    return -1


@pytest.mark.parametrize("seed", range(4))
def test_every_item_reachable_and_structure(seed):
    rows, ids, vocab = random_catalog(seed)
    index = build_prefix_index(rows, ids, vocab)
    assert [walk(index, r) for r in rows] == ids.tolist()
    np.testing.assert_array_equal(index.lookup(rows), ids)
    assert index.n_items == rows.shape[0]
    # Tokens sorted within each node, node numbering depth by depth.
    for n in range(index.n_nodes):
        toks = index.child_token[index.row_ptr[n] : index.row_ptr[n + 1]]
        assert np.all(np.diff(toks) > 0)
    branch = np.diff(index.row_ptr)
    for k in range(index.depth):
        assert branch[index.level_ptr[k] : index.level_ptr[k + 1]].max() == index.max_branch[k]
    np.testing.assert_array_equal(np.flatnonzero(index.root_mask), np.unique(rows[:, 0]))
    # items() gives back the catalogue.
    back_rows, back_ids = index.items()
    order = np.argsort(ids)
    np.testing.assert_array_equal(back_rows[np.argsort(back_ids)], rows[order])


def test_absent_rows_are_not_found():
    rows, ids, vocab = random_catalog(7)
    index = build_prefix_index(rows[1:], ids[1:], vocab)
    assert index.lookup(rows[:1])[0] == -1 and walk(index, rows[0]) == -1
    assert index.lookup(np.array([[-5, 0, 0, 0], [vocab, 0, 0, 0]])).tolist() == [-1, -1]


@pytest.mark.parametrize("seed", range(3))
def test_shuffled_input_builds_the_same_index(seed):
    rows, ids, vocab = random_catalog(seed)
    a = build_prefix_index(rows, ids, vocab)
    perm = np.random.default_rng(seed + 100).permutation(rows.shape[0])
    b = build_prefix_index(rows[perm], ids[perm], vocab)
    for field in ("row_ptr", "child_token", "child_node", "max_branch", "root_mask", "level_ptr"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_rejects_bad_input():
    rows, ids, vocab = random_catalog(1)
    with pytest.raises(ValueError, match="duplicate item rows"):
        build_prefix_index(np.concatenate([rows, rows[:1]]), np.arange(rows.shape[0] + 1), vocab)
    with pytest.raises(ValueError, match="item_tokens must lie"):
        build_prefix_index(rows, ids, int(rows.max()))
    with pytest.raises(ValueError, match="item_tokens must be"):
        build_prefix_index(rows[:, 0], ids, vocab)
    with pytest.raises(ValueError, match="item_ids must be"):
        build_prefix_index(rows, ids[:-1], vocab)
    with pytest.raises(ValueError, match="unique"):
        build_prefix_index(rows[:2], np.array([3, 3]), vocab)
    with pytest.raises(ValueError, match="integers"):
        build_prefix_index(rows.astype(float), ids, vocab)


def test_device_tables_match_csr():
    rows, ids, vocab = random_catalog(3)
    index = build_prefix_index(rows, ids, vocab)
    dev = index.to_tensors("cpu")
    assert torch.equal(dev.root_mask, torch.from_numpy(index.root_mask))
    assert len(dev.levels) == index.depth - 1
    for k in range(1, index.depth):
        level = dev.levels[k - 1]
        n_k = index.level_ptr[k + 1] - index.level_ptr[k]
        assert level.pad_row == n_k and level.width == max(1, index.max_branch[k])
        assert level.row_ptr.dtype == torch.int16  # a small catalogue: the narrowest type
        tok, kid = level.children_of(level.rows(torch.tensor([level.pad_row, -1])))
        assert tok.dtype == kid.dtype == torch.int64
        assert (tok == -1).all() and (kid == -1).all()  # the padding row is empty
    # Walking the tables reproduces every item.
    for row, item in zip(rows, ids, strict=True):
        node = int(dev.root_child[row[0]])
        for k in range(1, index.depth):
            tok, kid = dev.levels[k - 1].children_of(torch.tensor([node]))
            slot = (tok[0] == int(row[k])).nonzero()
            node = int(kid[0, slot[0, 0]])
        assert node == item


@pytest.mark.parametrize("padded", [True, False])
def test_inner_levels_store_no_children_and_compute_the_stored_ones(monkeypatch, padded):
    """Above the last depth a child is its edge position (the builder's node numbering),
    so the device tables keep no child array there; the children they compute are the
    host CSR's, slot by slot, in the padded and the CSR layout alike."""
    monkeypatch.setattr("models.prefix_index.pad_level", lambda *_: padded)
    rows, ids, vocab = random_catalog(3, n=400, vocab=30)
    index = build_prefix_index(rows, ids, vocab)
    dev = index.to_tensors("cpu")
    for k in range(1, index.depth):
        level = dev.levels[k - 1]
        assert level.padded == padded
        assert (level.child is None) == (k < index.depth - 1)
        nodes = np.arange(index.level_ptr[k], index.level_ptr[k + 1])
        tok, kid = level.children_of(torch.from_numpy(nodes - index.level_ptr[k]))
        for r, node in enumerate(nodes):
            edges = slice(int(index.row_ptr[node]), int(index.row_ptr[node + 1]))
            want = index.child_node[edges].astype(np.int64)
            if k < index.depth - 1:
                want = want - index.level_ptr[k + 1]
            n = len(want)
            assert kid[r, :n].tolist() == want.tolist() and (kid[r, n:] == -1).all()
            assert tok[r, :n].tolist() == index.child_token[edges].tolist()
            slots = torch.arange(level.width)
            at = level.child_at(torch.full_like(slots, r), slots)
            assert at.tolist() == kid[r].tolist()


def test_an_index_numbered_otherwise_is_refused_on_the_device():
    rows, ids, vocab = random_catalog(3, n=50)
    index = build_prefix_index(rows, ids, vocab)
    first = int(index.row_ptr[index.level_ptr[1]])  # the first edge out of depth 1
    swapped = index.child_node.copy()
    swapped[[first, first + 1]] = swapped[[first + 1, first]]
    with pytest.raises(ValueError, match="not numbered in the order"):
        dataclasses.replace(index, child_node=swapped).to_tensors()


def test_narrow_storage_gives_int64_results_past_int16():
    """The CSR is stored narrow (int16 here), yet lookups and listings are int64 and do
    not overflow where node id x vocabulary passes int16 (thousands of nodes x 400)."""
    rows, ids, vocab = random_catalog(5, n=2000, vocab=400)
    index = build_prefix_index(rows, ids, vocab)
    assert index.child_token.dtype == np.int16 and index.n_nodes * vocab > 2**15
    found = index.lookup(rows)
    assert found.dtype == np.int64 and found.tolist() == ids.tolist()
    listed_rows, listed_ids = index.items()
    assert listed_ids.dtype == np.int64
    assert sorted(map(tuple, listed_rows.tolist())) == sorted(map(tuple, rows.tolist()))


def test_device_tables_widen_to_hold_their_values():
    """Item ids past int16 (and past int32 in principle) get a wider child type; reads
    are int64 whatever the storage."""
    rows, ids, vocab = random_catalog(4)
    big = ids + 100_000
    dev = build_prefix_index(rows, big, vocab).to_tensors()
    last = dev.levels[-1]
    assert last.child.dtype == torch.int32 and dev.leaf_of.dtype == torch.int16
    assert dev.first_id == big.min() and dev.last_id == big.max()
    _, kid = last.children_of(torch.arange(last.pad_row))
    assert sorted(kid[kid >= 0].tolist()) == sorted(big.tolist())
    assert narrow_int(np.array([-1, 2**31]), 2**31).dtype == np.int64


def test_empty_index_and_real_token_rows():
    empty = build_prefix_index(np.zeros((0, 6), dtype=np.int64), np.zeros(0, np.int64), 50)
    assert empty.n_items == 0 and not empty.root_mask.any()
    assert empty.lookup(np.ones((2, 6), dtype=np.int64)).tolist() == [-1, -1]
    layout = TokenLayout(codebook_size=4, n_levels=3, dedup_size=40)
    rng = np.random.default_rng(0)
    cf, sem = rng.integers(0, 4, (300, 3)), rng.integers(0, 4, (300, 3))
    toks = item_tokens(cf, sem, rng.integers(0, 4, 300), 3, layout)
    index = build_prefix_index(toks, np.arange(300), layout.vocab_size)
    np.testing.assert_array_equal(index.lookup(toks), np.arange(300))


def test_overlay_add_lookup_merge():
    rows, ids, vocab = random_catalog(5)
    n_base = rows.shape[0] - 10
    base = build_prefix_index(rows[:n_base], ids[:n_base], vocab)
    ov = OverlayIndex(base)
    ov.add(rows[n_base : n_base + 4], ids[n_base : n_base + 4])
    ov.add(rows[n_base + 4 :], ids[n_base + 4 :])
    assert ov.n_added == 10
    np.testing.assert_array_equal(ov.lookup(rows), ids)
    np.testing.assert_array_equal(ov.overlay.lookup(rows[n_base:]), ids[n_base:])
    merged = ov.merged()
    full = build_prefix_index(rows, ids, vocab)
    for field in ("row_ptr", "child_token", "child_node", "max_branch", "root_mask"):
        np.testing.assert_array_equal(getattr(merged, field), getattr(full, field))
    base_t, over_t = ov.to_tensors("cpu")
    assert base_t.depth == over_t.depth == base.depth


def test_overlay_rejects_existing_sequences_and_ids():
    rows, ids, vocab = random_catalog(6)
    base = build_prefix_index(rows[:-3], ids[:-3], vocab)
    ov = OverlayIndex(base)
    with pytest.raises(ValueError, match="base index"):
        ov.add(rows[:1], [10**6])
    ov.add(rows[-3:-2], ids[-3:-2])
    with pytest.raises(ValueError, match="overlay index"):
        ov.add(rows[-3:-2], [10**6])
    with pytest.raises(ValueError, match="already in the index"):
        ov.add(rows[-2:-1], ids[:1])
    with pytest.raises(ValueError, match="duplicate"):
        ov.add(np.concatenate([rows[-1:], rows[-1:]]), [10**6, 10**6 + 1])
    with pytest.raises(ValueError, match="tokens per item"):
        ov.add(rows[-1:, :2], [10**6])
    assert ov.n_added == 1  # failed adds change nothing


@pytest.mark.parametrize("seed", range(3))
def test_path_tables_follow_each_rows_own_path(seed):
    rows, ids, vocab = random_catalog(seed + 200, n=120)
    n = rows.shape[0]
    table = np.zeros((n + 3, rows.shape[1]), dtype=np.int64)
    table[1 : n + 1] = rows  # rows 0, n + 1, n + 2 stay outside the tables
    table[n + 1] = rows[0]  # a duplicate of row 1, left out
    paths = build_path_tables(table, np.arange(1, n + 1))
    depth = rows.shape[1]
    assert paths.depth == depth and paths.node.shape == paths.slot.shape == (n + 3, depth)
    assert (paths.node[[0, n + 1, n + 2]] == -1).all() and (paths.slot[[0, n + 1]] == -1).all()
    node, slot = paths.node[1 : n + 1], paths.slot[1 : n + 1]
    tokens = torch.as_tensor(rows)
    for k in range(depth):
        # the node holds the row's first k tokens, and its own token sits at its slot
        assert torch.equal(paths.prefixes[k][node[:, k]], tokens[:, :k])
        assert torch.equal(paths.children[k][node[:, k], slot[:, k]], tokens[:, k])
        kids = paths.children[k]
        valid = kids >= 0
        assert (valid[:, :1]).all()  # every node has a child; -1 padding only at the end
        assert (valid[:, :-1] | ~valid[:, 1:]).all()
        both = valid[:, 1:] & valid[:, :-1]
        assert (kids[:, 1:][both] > kids[:, :-1][both]).all()  # ascending
    # The same tree as the prefix index: a node's children are the trie's children.
    index = build_prefix_index(rows, ids, vocab)
    for k in range(depth):
        for g, prefix in enumerate(paths.prefixes[k].tolist()):
            node_id = 0
            for tok in prefix:  # walk the CSR trie
                lo, hi = index.row_ptr[node_id], index.row_ptr[node_id + 1]
                node_id = int(
                    index.child_node[lo + np.flatnonzero(index.child_token[lo:hi] == tok)[0]]
                )
            lo, hi = index.row_ptr[node_id], index.row_ptr[node_id + 1]
            kids = paths.children[k][g]
            assert kids[kids >= 0].tolist() == index.child_token[lo:hi].tolist()
    with pytest.raises(ValueError, match="duplicate"):
        build_path_tables(table, np.arange(1, n + 2))


def test_an_int64_index_from_an_older_bundle_reads_the_same():
    """Bundles written before the narrow CSR hold int64 arrays: same lookups, same tables."""
    rows, ids, vocab = random_catalog(6)
    narrow = build_prefix_index(rows, ids, vocab)
    wide = dataclasses.replace(
        narrow,
        row_ptr=narrow.row_ptr.astype(np.int64),
        child_token=narrow.child_token.astype(np.int64),
        child_node=narrow.child_node.astype(np.int64),
    )
    np.testing.assert_array_equal(wide.lookup(rows), narrow.lookup(rows))
    a, b = wide.to_tensors(), narrow.to_tensors()
    for x, y in zip(a.levels, b.levels, strict=True):
        for s, t in zip(x.tensors(), y.tensors(), strict=True):
            assert s.dtype == t.dtype and torch.equal(s, t)
