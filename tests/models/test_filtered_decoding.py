"""Business-rule filters inside constrained decoding: the beam search's `allowed` prunes
prefixes with no allowed item below them (checked against the reference search), and the
served decoding with an allowed-row mask returns only allowed rows, k of them whenever k
exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import decoding
from models.beam_search import constrained_beam_search
from models.decoding import DecodingConfig, recommend_top_k, rows_of
from models.overlay_index import OverlayIndex
from models.prefix_index import build_prefix_index
from models.reference_beam_search import reference_beam_search
from tests.bundle_factory import tiny_contents
from tests.models.test_beam_search import assert_matches_reference, make_table_model
from tests.models.test_decoding import HISTORY, N_ITEMS, make_table
from tests.models.test_prefix_index import random_catalog


def allowed_ids(ids: np.ndarray, sizes: list[int], seed: int) -> torch.Tensor:
    """(B, max size) random allowed item ids per request, -1 padding."""
    rng = np.random.default_rng(seed)
    out = torch.full((len(sizes), max(max(sizes), 1)), -1, dtype=torch.int64)
    for b, size in enumerate(sizes):
        out[b, :size] = torch.from_numpy(rng.choice(ids, size, replace=False))
    return out


def as_mask(allowed: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(B, P) allowed ids, -1 padding -> the same sets as a (B, n_rows) bool row mask."""
    mask = torch.zeros(allowed.shape[0], n_rows, dtype=torch.bool)
    mask.scatter_(1, allowed.clamp(min=0), allowed >= 0)
    mask[:, 0] &= (allowed == 0).any(dim=1)  # -1 padding landed on row 0
    return mask


def test_leaf_ranges_cover_exactly_the_items_below_each_node():
    rows, ids, vocab = random_catalog(3, n=120)
    index = build_prefix_index(rows, ids, vocab)
    dev = index.to_tensors()
    order = np.lexsort(rows.T[::-1])  # leaf order = lexicographic order of the rows
    assert dev.leaf_items.tolist() == ids[order].tolist()
    assert dev.leaf_positions(torch.as_tensor(ids[order])).tolist() == list(range(len(ids)))
    absent = torch.tensor([-5, ids.max() + 1, np.setdiff1d(np.arange(ids.max()), ids)[0]])
    assert dev.leaf_positions(absent).tolist() == [-1, -1, -1]
    for k in range(1, index.depth):
        prefixes = np.unique(rows[:, :k], axis=0)  # lexicographic = local node order
        level = dev.levels[k - 1]
        lo, hi = level.leaf_runs(torch.arange(len(prefixes) + 1))
        assert level.pad_row == len(prefixes) and lo[-1] == hi[-1]  # padding row: empty
        assert level.rows(torch.tensor([-1])).item() == level.pad_row
        for node, prefix in enumerate(prefixes):
            below = (rows[order][:, :k] == prefix).all(axis=1)
            assert np.flatnonzero(below).tolist() == list(range(int(lo[node]), int(hi[node])))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("overlay", [False, True])
@pytest.mark.parametrize("form", ["ids", "mask"])
def test_allowed_matches_the_reference_and_never_emits_a_masked_item(seed, overlay, form):
    rows, ids, vocab = random_catalog(seed + 40, n=220)
    if overlay:
        n_base = rows.shape[0] - 30
        ov = OverlayIndex(build_prefix_index(rows[:n_base], ids[:n_base], vocab))
        ov.add(rows[n_base:], ids[n_base:])
        index = ov.to_tensors()
    else:
        index = build_prefix_index(rows, ids, vocab).to_tensors()
    step_fn = make_table_model(seed, rows.shape[1], vocab)
    # Tiny, small, large and empty allowed sets; a beam narrower than the small ones.
    allowed = allowed_ids(ids, [1, 7, len(ids) // 2, 0], seed)
    batch, width, top_k = 4, 5, 5
    given = allowed if form == "ids" else as_mask(allowed, int(ids.max()) + 1)
    got = constrained_beam_search(step_fn, index, batch, width, top_k, allowed=given)
    want = reference_beam_search(step_fn, rows, ids, batch, width, top_k, allowed=allowed)
    # (the helper needs one result per request: the last one, allowed nothing, has none)
    assert_matches_reference(tuple(x[:3] for x in got), want[:3], rows, ids)
    assert want[3] == [] and (got[0][3] == -1).all() and torch.isneginf(got[1][3]).all()
    items = got[0]
    for b in range(batch):
        permitted = set(allowed[b].tolist()) - {-1}
        found = set(items[b].tolist()) - {-1}
        assert found <= permitted
        # Pruned prefixes: the beam finds min(top_k, |allowed|) items, however few exist.
        assert len(found) == min(top_k, len(permitted))


def test_allowed_and_exclude_together():
    rows, ids, vocab = random_catalog(7, n=150)
    index = build_prefix_index(rows, ids, vocab).to_tensors()
    step_fn = make_table_model(7, rows.shape[1], vocab)
    allowed = allowed_ids(ids, [10, 10], 1)
    exclude = allowed[:, :4].clone()
    items = constrained_beam_search(step_fn, index, 2, 8, 8, exclude=exclude, allowed=allowed)[0]
    for b in range(2):
        found = set(items[b].tolist()) - {-1}
        assert found <= set(allowed[b].tolist()) - set(exclude[b].tolist())
    # Exclusions act at the last step only (beams may die on excluded leaves); taken out
    # of the allowed set, as models.decoding does, they prune prefixes too: all 6 found.
    remaining = torch.where(torch.isin(allowed, exclude), -1, allowed)
    items = constrained_beam_search(step_fn, index, 2, 8, 8, allowed=remaining)[0]
    for b in range(2):
        assert set(items[b].tolist()) - {-1} == set(remaining[b].tolist()) - {-1}


def test_allowed_argument_checks():
    rows, ids, vocab = random_catalog(1, n=40)
    index = build_prefix_index(rows, ids, vocab).to_tensors()
    step_fn = make_table_model(1, rows.shape[1], vocab)
    with pytest.raises(ValueError, match="int64"):
        constrained_beam_search(step_fn, index, 2, 3, 3, allowed=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(2, P or R\)"):
        constrained_beam_search(
            step_fn, index, 2, 3, 3, allowed=torch.zeros(3, 3, dtype=torch.int64)
        )


def test_a_mask_narrower_than_the_index_is_refused():
    rows, ids, vocab = random_catalog(1, n=40)
    index = build_prefix_index(rows, ids, vocab).to_tensors()
    step_fn = make_table_model(1, rows.shape[1], vocab)
    narrow = torch.ones(2, int(ids.max()), dtype=torch.bool)  # misses the largest id
    with pytest.raises(ValueError, match="allowed mask covers rows"):
        constrained_beam_search(step_fn, index, 2, 3, 3, allowed=narrow)


def test_rows_of():
    mask = torch.tensor([[False, True, True, False], [False] * 4, [True, False, False, True]])
    assert rows_of(mask).tolist() == [[1, 2], [-1, -1], [0, 3]]


@pytest.fixture(scope="module")
def contents():
    return tiny_contents(n_items=N_ITEMS, budget=3, seed=5)


@pytest.mark.parametrize("dense_weight", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("grow", [False, True])
@pytest.mark.parametrize("beam_form", ["ids", "mask"])
def test_decoding_with_a_mask_returns_k_allowed_rows(
    contents, dense_weight, grow, beam_form, monkeypatch
):
    """Each request's allowed rows: a few (fewer than k), exactly k, many, and ones that
    the exclusions mostly cover; the answer holds only allowed, eligible rows, k of them
    whenever k exist, with a beam and a dense candidate count far below the catalogue.
    beam_form: how the filter reaches the beam search (a list of ids, or the row mask
    that broad filters use: `SPARSE_ALLOWED_MAX`)."""
    if beam_form == "mask":
        monkeypatch.setattr(decoding, "SPARSE_ALLOWED_MAX", 0)
    table = make_table(contents, grow)
    cat = table.catalogue()
    k = 5
    live = torch.nonzero(cat.live).squeeze(1).numpy()
    rng = np.random.default_rng(3)
    allowed = torch.zeros(4, cat.n_rows, dtype=torch.bool)
    for b, size in enumerate([3, k, len(live) - 2, 9]):
        allowed[b, torch.as_tensor(rng.permutation(live)[:size])] = True
    if grow:
        allowed[:, N_ITEMS + 2] = True  # a dead (replaced) row: allowed, never returned
    exclude = torch.full((4, 6), -1, dtype=torch.int64)
    exclude[3] = torch.nonzero(allowed[3]).squeeze(1)[:6]  # leaves 3 of its 9 rows
    config = DecodingConfig(beam_width=2, dense_weight=dense_weight, dense_candidates=1)
    rows, scores = recommend_top_k(
        contents.generator, HISTORY, cat, k, config, exclude=exclude, allowed=allowed
    )
    for b in range(4):
        eligible = set(torch.nonzero(allowed[b] & cat.live).squeeze(1).tolist())
        eligible -= set(exclude[b].tolist())
        got = [r for r in rows[b].tolist() if r > 0]
        assert set(got) <= eligible and len(set(got)) == len(got)
        assert len(got) == min(k, len(eligible))
        assert torch.isfinite(scores[b, : len(got)]).all()
        assert (rows[b, len(got) :] == -1).all()


@pytest.mark.parametrize("dense_weight", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("grow", [False, True])
def test_row_lists_decode_as_the_same_rows_as_a_mask(contents, dense_weight, grow):
    """A short allowlist reaches decoding as (B, P) row lists (no catalogue-sized mask):
    the same rows and scores as the mask of the same sets, exclusions and dead rows
    (listed, never returned) included, and an empty list gives nothing."""
    table = make_table(contents, grow)
    cat = table.catalogue()
    live = torch.nonzero(cat.live).squeeze(1).numpy()
    sizes = [3, 5, len(live) - 2, 0]
    lists = allowed_ids(live, sizes, seed=4)
    if grow:
        lists[1, 0] = N_ITEMS + 2  # a dead (replaced) row
    exclude = torch.full((4, 2), -1, dtype=torch.int64)
    exclude[2] = lists[2, :2]
    config = DecodingConfig(beam_width=3, dense_weight=dense_weight, dense_candidates=2)
    got = recommend_top_k(
        contents.generator, HISTORY, cat, 5, config, exclude=exclude, allowed=lists
    )
    want = recommend_top_k(
        contents.generator,
        HISTORY,
        cat,
        5,
        config,
        exclude=exclude,
        allowed=as_mask(lists, cat.n_rows),
    )
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert (got[0][3] == -1).all()


def test_decoding_mask_checks_its_shape(contents):
    cat = make_table(contents).catalogue()
    for bad in (
        torch.ones(4, cat.n_rows - 1, dtype=torch.bool),
        torch.full((4, 2), cat.n_rows, dtype=torch.int64),  # a row past the catalogue
        torch.full((3, 2), 1, dtype=torch.int64),
        torch.ones(4, 2, dtype=torch.int32),
    ):
        with pytest.raises(ValueError, match="bool tensor"):
            recommend_top_k(contents.generator, HISTORY, cat, 3, DecodingConfig(), allowed=bad)


def test_unfiltered_decoding_is_unchanged_by_an_all_true_mask(contents):
    """A mask that allows every row ranks as no mask does (the scores are the model's)."""
    cat = make_table(contents, grow=True).catalogue()
    config = DecodingConfig(beam_width=4, dense_weight=0.5, dense_candidates=4)
    plain = recommend_top_k(contents.generator, HISTORY, cat, 6, config)
    everything = torch.ones(4, cat.n_rows, dtype=torch.bool)
    masked = recommend_top_k(contents.generator, HISTORY, cat, 6, config, allowed=everything)
    assert torch.equal(plain[0], masked[0])
    torch.testing.assert_close(plain[1], masked[1])
