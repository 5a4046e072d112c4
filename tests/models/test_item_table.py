"""The serving item table: base rows, rows added at serving time, retired rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import item_table
from models.beam_search import sequence_log_probs
from models.item_table import ItemTable
from models.prefix_index import build_prefix_index
from models.tokens import assign_dedup
from tests.bundle_factory import tiny_contents

N_ITEMS = 20


@pytest.fixture(scope="module")
def contents():
    return tiny_contents(n_items=N_ITEMS, budget=3, seed=4)


def make_table(contents) -> ItemTable:
    index = build_prefix_index(
        contents.item_tokens[1:], np.arange(1, N_ITEMS + 1), contents.layout.vocab_size
    )
    return ItemTable(contents.item_vectors, contents.item_tokens, index)


def fresh_tokens(contents, like_rows, taken=None) -> np.ndarray:
    """(M, L + 1) new token rows with the code prefixes of `like_rows` and dedup ids no
    item (base rows, plus the (K, L + 1) rows `taken`) holds yet."""
    layout, budget = contents.layout, contents.budget
    held = (
        contents.item_tokens[1:]
        if taken is None
        else np.concatenate([contents.item_tokens[1:], taken])
    )
    prefixes = contents.item_tokens[like_rows, :budget]
    dedup = assign_dedup(
        prefixes, existing=(held[:, :budget], held[:, budget] - layout.dedup_offset)
    )
    return np.concatenate([prefixes, layout.dedup_token(dedup)[:, None]], axis=1)


def vectors(m: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, 16)).astype(np.float32)


def found_rows(table: ItemTable, tokens: np.ndarray) -> list[int]:
    """The rows the catalogue's index (base + overlay, as the decoder reads it) gives the
    token rows, -1 where it has none."""
    cat = table.catalogue()
    tokens = torch.as_tensor(np.asarray(tokens))
    logits = torch.zeros(tokens.shape[0], tokens.shape[1], cat.index[0].vocab_size)
    return sequence_log_probs(logits, tokens, cat.index)[1].tolist()


def snapshot(table: ItemTable) -> dict:
    cat = table.catalogue()
    base, over = cat.index
    return {
        "n_rows": table.n_rows,
        "vectors": table.vectors.clone(),
        "tokens": table.tokens.clone(),
        "live": table.live.clone(),
        "n_added": table.overlay.n_added,
        "overlay_levels": [t.clone() for level in over.levels for t in level.tensors()],
        "overlay_root": over.root_mask.clone(),
        "base_levels": [t.clone() for level in base.levels for t in level.tensors()],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], list):
            assert len(a[key]) == len(b[key]) and all(
                torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True)
            ), key
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_a_new_table_holds_the_bundle_rows(contents):
    table = make_table(contents)
    assert table.n_rows == N_ITEMS + 1 and table.n_base == N_ITEMS
    assert table.live.tolist() == [False] + [True] * N_ITEMS
    cat = table.catalogue()
    assert cat.n_rows == N_ITEMS + 1
    np.testing.assert_array_equal(cat.item_vectors.numpy(), contents.item_vectors)
    np.testing.assert_array_equal(cat.item_tokens.numpy(), contents.item_tokens)
    assert found_rows(table, contents.item_tokens[1:]) == list(range(1, N_ITEMS + 1))
    with pytest.raises(ValueError, match="item vectors"):
        ItemTable(contents.item_vectors[:-1], contents.item_tokens, table.overlay.base)


def test_add_grows_rows_and_the_overlay(contents):
    table = make_table(contents)
    before = table.catalogue()
    toks = fresh_tokens(contents, [3, 7])
    vecs = vectors(2)
    rows = table.add(vecs, toks)
    assert rows.tolist() == [N_ITEMS + 1, N_ITEMS + 2]
    assert table.n_rows == N_ITEMS + 3 and table.overlay.n_added == 2
    np.testing.assert_array_equal(table.vectors[rows].numpy(), vecs)
    np.testing.assert_array_equal(table.tokens[rows].numpy(), toks)
    assert table.live[rows].all() and table.live[1:].all() and not table.live[0]
    assert found_rows(table, toks) == rows.tolist()
    assert found_rows(table, contents.item_tokens[[3, 7]]) == [3, 7]  # the base is intact
    # A second add continues the numbering.
    more = table.add(vectors(1, seed=1), fresh_tokens(contents, [3], taken=toks))
    assert more.tolist() == [N_ITEMS + 3]
    # A catalogue taken earlier is a snapshot: it does not see later additions.
    assert before.n_rows == N_ITEMS + 1 and before.live.shape == (N_ITEMS + 1,)
    logits = torch.zeros(2, toks.shape[1], before.index[0].vocab_size)
    assert sequence_log_probs(logits, torch.as_tensor(toks), before.index)[1].tolist() == [-1, -1]


def test_retired_rows_are_not_live_and_leave_the_overlay(contents):
    table = make_table(contents)
    toks = fresh_tokens(contents, [2, 5, 9])
    (a, b, c) = table.add(vectors(3), toks)
    replacement = fresh_tokens(contents, [11], taken=toks)
    (d,) = table.add(vectors(1, seed=2), replacement, retire=np.array([b]))
    assert d == N_ITEMS + 4 and table.n_rows == N_ITEMS + 5
    assert table.live.tolist() == [False] + [True] * N_ITEMS + [True, False, True, True]
    assert found_rows(table, toks) == [a, -1, c]  # b's tokens left the index
    assert found_rows(table, replacement) == [d]
    assert table.overlay.n_added == 3
    # The retired row stays readable (a history may still hold it).
    np.testing.assert_array_equal(table.tokens[b].numpy(), toks[1])
    np.testing.assert_array_equal(table.vectors[b].numpy(), vectors(3)[1])
    # Its tokens are free again: a later item may take them.
    (e,) = table.add(vectors(1, seed=3), toks[1:2])
    assert found_rows(table, toks) == [a, e, c]
    # Replacing an item by one with the same tokens works in a single call.
    (f,) = table.add(vectors(1, seed=4), toks[:1], retire=[a])
    assert found_rows(table, toks) == [f, e, c] and not table.live[a]


@pytest.mark.parametrize("case", ["base", "overlay", "twice", "with_retire"])
def test_a_clash_raises_and_leaves_the_table_unchanged(contents, case):
    table = make_table(contents)
    toks = fresh_tokens(contents, [4, 6])
    table.add(vectors(2), toks)
    table.add(vectors(1), fresh_tokens(contents, [8], taken=toks), retire=[N_ITEMS + 2])
    before = snapshot(table)
    retire = None
    if case == "base":
        clash = np.stack([fresh_tokens(contents, [10], taken=toks)[0], contents.item_tokens[5]])
    elif case == "overlay":
        clash = toks[:1]  # row N + 1, live
    elif case == "twice":
        new = fresh_tokens(contents, [12], taken=toks)
        clash = np.concatenate([new, new])
    else:  # the retire path rebuilds the overlay: a clash with another live row still fails
        clash, retire = toks[:1], [N_ITEMS + 3]
    with pytest.raises(ValueError):
        table.add(vectors(len(clash)), clash, retire=retire)
    assert_same(snapshot(table), before)
    # ... and the table still works.
    rows = table.add(vectors(1), fresh_tokens(contents, [13], taken=toks))
    assert rows.tolist() == [N_ITEMS + 4]


def test_bad_vectors_leave_the_table_unchanged(contents):
    table = make_table(contents)
    before = snapshot(table)
    with pytest.raises((ValueError, RuntimeError)):
        table.add(np.zeros((1, 17), np.float32), fresh_tokens(contents, [3]))
    assert_same(snapshot(table), before)
    assert table.add(vectors(1), fresh_tokens(contents, [3])).tolist() == [N_ITEMS + 1]


def test_vectors_and_tokens_must_match(contents):
    table = make_table(contents)
    with pytest.raises(ValueError):
        table.add(vectors(2), fresh_tokens(contents, [3]))
    assert table.vectors.shape[0] == table.tokens.shape[0] == table.n_rows


def test_withdrawn_rows_stay_indexed_and_can_be_reinstated(contents):
    """Withdrawing (an item retired through DELETE /items) is undone by reinstating;
    unlike a row superseded by a replace, a withdrawn row keeps its place in the index."""
    table = make_table(contents)
    toks = fresh_tokens(contents, [2, 5])
    (a, b) = table.add(vectors(2), toks)
    held = table.catalogue()
    table.set_withdrawn(np.array([3, a]), True)
    assert not table.live[3] and not table.live[a] and table.live[b]
    assert held.live[3] and held.live[a]  # a snapshot taken before keeps what it saw
    # A replace of b rebuilds the overlay: withdrawn a stays in it.
    (c,) = table.add(vectors(1, seed=1), fresh_tokens(contents, [7], taken=toks), retire=[b])
    assert found_rows(table, toks) == [a, -1]
    assert table.live.tolist().count(False) == 4  # padding, 3, a, b
    table.set_withdrawn(np.array([3, a, b]), False)
    assert table.live[3] and table.live[a] and table.live[c]
    assert not table.live[b]  # superseded: reinstating does not bring it back
    with pytest.raises(ValueError):
        table.set_withdrawn(np.array([0]), True)
    with pytest.raises(ValueError):
        table.set_withdrawn(np.array([table.n_rows]), True)


def decode_all(table: ItemTable, seed: int = 0):
    """What the decoder gives on the table's current catalogue: a beam search (items,
    scores, tokens) and the teacher-forced score and item of every row."""
    from models.beam_search import constrained_beam_search
    from tests.models.test_beam_search import make_table_model

    cat = table.catalogue()
    vocab, depth = cat.index[0].vocab_size, cat.item_tokens.shape[1]
    step_fn = make_table_model(seed, depth, vocab)
    beam = constrained_beam_search(step_fn, cat.index, 2, 12, 12)
    logits = torch.randn(cat.n_rows, depth, vocab, generator=torch.Generator().manual_seed(seed))
    scores, items = sequence_log_probs(logits, cat.item_tokens, cat.index)
    return beam, scores, items


def assert_same_decoding(a, b) -> None:
    (a_beam, a_scores, a_items), (b_beam, b_scores, b_items) = a, b
    for x, y in zip(a_beam, b_beam, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a_scores, b_scores) and torch.equal(a_items, b_items)


def test_a_background_merge_changes_no_result(contents):
    """The overlay folded into the base (build on any thread, swap on the serving one):
    beam search and teacher-forced scores are the same before and after, bit for bit, and
    an item added between the snapshot and the swap stays servable."""
    table = make_table(contents)
    toks = fresh_tokens(contents, [1, 3, 5, 7, 9, 11])
    rows = table.add(vectors(6), toks)
    job = table.merge_job()
    late_toks = fresh_tokens(contents, [2], taken=toks)
    (late,) = table.add(vectors(1, seed=5), late_toks)  # lands while the merge builds
    during = decode_all(table)
    merged = job()  # what the merge thread runs
    assert table.install_merge(merged)
    assert table.overlay.n_added == 1  # only the late item is left in the overlay
    assert_same_decoding(decode_all(table), during)
    assert found_rows(table, toks) == rows.tolist() and found_rows(table, late_toks) == [late]
    # A second round empties the overlay; the decoder then skips it.
    assert table.install_merge(table.merge_job()())
    assert table.overlay.n_added == 0 and table.merge_job() is None
    assert_same_decoding(decode_all(table), during)
    # The base now holds every item: the same index as one built from scratch.
    full = build_prefix_index(
        np.concatenate([contents.item_tokens[1:], toks, late_toks]),
        np.concatenate([np.arange(1, N_ITEMS + 1), rows, [late]]),
        contents.layout.vocab_size,
    )
    merged = [t for level in table.catalogue().index[0].levels for t in level.tensors()]
    fresh = [t for level in full.to_tensors().levels for t in level.tensors()]
    for x, y in zip(merged, fresh, strict=True):
        assert torch.equal(x, y)


def test_a_replace_after_a_merge_and_a_stale_merge(contents):
    """Replacing a row that a merge put into the base rebuilds from the bundle's index (its
    tokens are free again); a merge snapshotted before such a rebuild is not installed."""
    table = make_table(contents)
    toks = fresh_tokens(contents, [2, 4])
    (a, b) = table.add(vectors(2), toks)
    assert table.install_merge(table.merge_job()())
    stale = table.merge_job()
    assert stale is None  # nothing left to merge
    (c,) = table.add(vectors(1, seed=1), fresh_tokens(contents, [6], taken=toks))
    stale = table.merge_job()
    # Replace a (in the merged base) by an item with the same tokens.
    (d,) = table.add(vectors(1, seed=2), toks[:1], retire=[a])
    assert not table.live[a] and found_rows(table, toks) == [d, b]
    assert not table.install_merge(stale())  # built before the rebuild: dropped
    assert found_rows(table, toks) == [d, b]
    before = decode_all(table)
    assert table.install_merge(table.merge_job()())
    assert table.overlay.n_added == 0 and found_rows(table, toks) == [d, b]
    assert found_rows(table, table.tokens[[c]].numpy()) == [c]
    assert_same_decoding(decode_all(table), before)


def test_adds_fill_spare_rows_and_keep_earlier_catalogues_intact(contents, monkeypatch):
    """Adds write into spare buffer rows (no copy of the whole table per add) and grow
    the buffers when full; a catalogue taken before an add still reads what it read."""
    monkeypatch.setattr(item_table, "MIN_SPARE_ROWS", 2)  # grow often on a tiny table
    table = make_table(contents)
    before = table.catalogue()
    seen_vectors = before.item_vectors.clone()
    taken = np.zeros((0, contents.item_tokens.shape[1]), dtype=np.int64)
    added_vectors = []
    for step in range(3):  # 3 adds of 5 rows (spread over prefixes): two growths
        like = np.arange(5 * step, 5 * step + 5) % N_ITEMS + 1
        tokens = fresh_tokens(contents, like, taken)
        vecs = vectors(len(tokens), seed=step)
        table.add(vecs, tokens)
        taken = np.concatenate([taken, tokens])
        added_vectors.append(vecs)
    assert table.n_rows == N_ITEMS + 1 + len(taken)
    np.testing.assert_array_equal(
        table.vectors[N_ITEMS + 1 :].numpy(), np.concatenate(added_vectors)
    )
    np.testing.assert_array_equal(table.tokens[N_ITEMS + 1 :].numpy(), taken)
    assert torch.equal(before.item_vectors, seen_vectors)  # the old view is untouched
    assert found_rows(table, taken[-3:]) == list(range(table.n_rows - 3, table.n_rows))
