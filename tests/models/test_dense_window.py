"""Depth-1 windows (models.dense_window): the same search as the padded reads, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.beam_search import constrained_beam_search
from models.dense_window import WINDOW_FILL, window_arrays
from models.device_index import DeviceIndex
from models.overlay_index import OverlayIndex
from models.prefix_index import build_prefix_index
from models.reference_beam_search import reference_beam_search
from tests.models.test_beam_search import assert_matches_reference, make_table_model
from tests.models.test_prefix_index import random_catalog


def without_windows(dev: DeviceIndex) -> DeviceIndex:
    levels = tuple(dataclasses.replace(level, window=None) for level in dev.levels)
    return dataclasses.replace(dev, levels=levels)


def test_window_arrays_cover_exactly_each_rows_children():
    tokens = np.array([[5, 6, 8, -1], [11, 12, -1, -1], [4, 5, 6, 7], [-1, -1, -1, -1]])
    start, mask, slot = window_arrays(tokens, vocab_size=13)
    span = mask.shape[1]
    assert span == 4 and start[1] == 9  # the window of 11, 12 ends at the last token
    for r in range(3):
        kids = tokens[r][tokens[r] >= 0]
        window = start[r] + np.arange(span)
        assert (window[mask[r] == 0] == kids).all()
        assert (mask[r][~np.isin(window, kids)] == -np.inf).all()
        assert (tokens[r][slot[r][slot[r] >= 0]] == window[slot[r] >= 0]).all()
    assert (mask[-1] == -np.inf).all() and (slot[-1] == -1).all()  # the padding row


def test_sparse_levels_get_no_window():
    # 3 children spread over 30 tokens: the padded read touches fewer slots.
    tokens = np.array([[3, 17, 32], [4, 5, -1], [-1, -1, -1]])
    assert 30 * WINDOW_FILL > 3 and window_arrays(tokens, vocab_size=40) is None


@pytest.mark.parametrize(("seed", "quantise"), [(0, False), (1, True), (2, False), (3, True)])
def test_windowed_search_equals_the_padded_one(seed, quantise):
    rows, ids, vocab = random_catalog(seed, n=1000, depth=3)
    dev = build_prefix_index(rows, ids, vocab).to_tensors()
    assert dev.levels[0].window is not None  # the catalogue is dense at depth 1
    step_fn = make_table_model(seed, rows.shape[1], vocab, quantise)
    got = constrained_beam_search(step_fn, dev, 4, 12, 8)
    padded = constrained_beam_search(step_fn, without_windows(dev), 4, 12, 8)
    assert all(torch.equal(a, b) for a, b in zip(got, padded, strict=True))
    want = reference_beam_search(step_fn, rows, ids, 4, 12, 8)
    assert_matches_reference(got, want, rows, ids)


@pytest.mark.parametrize("seed", range(3))
def test_an_overlay_read_through_the_windows_lays_out_as_the_merged_index(seed):
    """Overlay children placed in their base nodes' windows: each beam's window is the
    merged index's, value for value and place for place (so its log-softmax rounds the
    same), and the search finds the merged index's items and the reference's."""
    rows, ids, vocab = random_catalog(seed, n=1000, depth=3)
    # Every item under three two-token prefixes is added later, so the base lacks those
    # prefixes but has their first tokens, with second tokens on both sides (so the
    # added ones fall inside the base node's window).
    pairs = np.unique(rows[:, :2], axis=0)
    inside = [
        (pairs[(pairs[:, 0] == a) & (pairs[:, 1] < b)].size > 0)
        and (pairs[(pairs[:, 0] == a) & (pairs[:, 1] > b)].size > 0)
        for a, b in pairs
    ]
    rng = np.random.default_rng(seed)
    moved = pairs[rng.choice(np.flatnonzero(inside), 3, replace=False)]
    added = (rows[:, None, :2] == moved[None]).all(axis=2).any(axis=1)
    assert np.isin(moved[:, 0], rows[~added, 0]).all()
    ov = OverlayIndex(build_prefix_index(rows[~added], ids[~added], vocab))
    ov.add(rows[added], ids[added])
    (base, over), merged = ov.to_tensors(), ov.merged().to_tensors()
    window, merged_window = base.levels[0].window, merged.levels[0].window
    assert window is not None and merged_window is not None
    # Every first token's depth-1 node in each index, read once per "beam".
    first = torch.as_tensor(np.unique(rows[:, 0]))
    node_b, node_o, node_m = (
        base.root_child[first],
        over.root_child[first],
        merged.root_child[first],
    )
    level_o = over.levels[0]
    tok_o = level_o.tokens_of(level_o.rows(node_o))
    offsets = window.overlay_offsets(node_b, node_b >= 0, tok_o)
    assert offsets is not None and (offsets >= 0).any()  # some overlay child is read in
    logits = torch.randn(1, len(first), vocab, generator=torch.Generator().manual_seed(seed))
    got = window.scores(logits, node_b[None], (tok_o, offsets))
    want = merged_window.scores(logits, node_m[None])
    assert torch.equal(got, want)
    step_fn = make_table_model(seed, rows.shape[1], vocab)
    got = constrained_beam_search(step_fn, (base, over), 4, 12, 8)
    want = constrained_beam_search(step_fn, merged, 4, 12, 8)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    # The last depth reads padded rows, overlay children after the base's: its sums may
    # round differently from the merged order (as before windows existed).
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)
    assert_matches_reference(got, reference_beam_search(step_fn, rows, ids, 4, 12, 8), rows, ids)


def test_an_overlay_child_outside_its_window_falls_back_to_the_padded_read():
    rows, ids, vocab = random_catalog(5, n=1000, depth=3)
    base = build_prefix_index(rows, ids, vocab)
    window = base.to_tensors().levels[0].window
    assert window is not None
    # A new item under an existing first token whose second token lies past that node's
    # window (a token of the last position's range): it has no place in the window.
    first = int(rows[0, 0])
    node = int(base.to_tensors().root_child[first])
    outside = int(window.start[node]) + window.size
    assert outside < vocab and outside not in rows[rows[:, 0] == first, 1]
    new_row = np.array([[first, outside, int(rows[0, 2])]])
    ov = OverlayIndex(base)
    ov.add(new_row, np.array([10**6]))
    all_rows, all_ids = np.concatenate([rows, new_row]), np.append(ids, 10**6)
    step_fn = make_table_model(5, rows.shape[1], vocab)
    got = constrained_beam_search(step_fn, ov.to_tensors(), 4, 12, 8)
    want = reference_beam_search(step_fn, all_rows, all_ids, 4, 12, 8)
    assert_matches_reference(got, want, all_rows, all_ids)
