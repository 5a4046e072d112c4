"""Served decoding: beam-search + dense candidates, one mixed score, top k."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.beam_search import constrained_beam_search
from models.decoding import (
    Candidates,
    Catalogue,
    DecodingConfig,
    dense_log_probs,
    exact_log_probs,
    exact_scores,
    find_candidates,
    generative_log_probs,
    mix,
    recommend_top_k,
    top_k_of,
)
from models.generator import Generator
from models.item_table import ItemTable
from models.prefix_index import build_prefix_index
from models.tokens import assign_dedup
from tests.bundle_factory import tiny_contents

N_ITEMS = 16
NEG_INF = float("-inf")


@pytest.fixture(scope="module")
def contents():
    return tiny_contents(n_items=N_ITEMS, budget=3, seed=5)


def fresh_tokens(contents, like_rows) -> np.ndarray:
    """(M, L + 1) token rows with the code prefixes of `like_rows` and unused dedup ids."""
    layout, budget = contents.layout, contents.budget
    held = contents.item_tokens[1:]
    prefixes = contents.item_tokens[like_rows, :budget]
    dedup = assign_dedup(
        prefixes, existing=(held[:, :budget], held[:, budget] - layout.dedup_offset)
    )
    return np.concatenate([prefixes, layout.dedup_token(dedup)[:, None]], axis=1)


def make_table(contents, grow: bool = False) -> ItemTable:
    """The bundle's rows; with grow, 3 rows added at serving time and the second of them
    replaced by a fourth (rows N + 1, N + 3, N + 4 live; N + 2 retired)."""
    index = build_prefix_index(
        contents.item_tokens[1:], np.arange(1, N_ITEMS + 1), contents.layout.vocab_size
    )
    table = ItemTable(contents.item_vectors, contents.item_tokens, index)
    if grow:
        toks = fresh_tokens(contents, [1, 2, 3, 4])
        rng = np.random.default_rng(0)
        table.add(rng.standard_normal((3, 16)).astype(np.float32), toks[:3])
        table.add(rng.standard_normal((1, 16)).astype(np.float32), toks[3:], retire=[N_ITEMS + 2])
    return table


HISTORY = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6], [0, 0, 0, 0, 9], [7, 8, 9, 10, 11]])


def state_of(model, history, catalogue) -> torch.Tensor:
    return model.user_state(catalogue.item_vectors[history], history != 0)


def eligible_rows(catalogue: Catalogue, exclude: torch.Tensor) -> list[set[int]]:
    live = set(torch.nonzero(catalogue.live).squeeze(1).tolist())
    return [live - set(row.tolist()) for row in exclude]


# ---- every request gets k results ----------------------------------------------------------


@pytest.mark.parametrize("dense_weight", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("grow", [False, True])
def test_heavy_exclusions_still_give_k_results(contents, dense_weight, grow):
    """Exclusions cover most of the catalogue and the beam is tiny: every request still
    gets k results while k rows are eligible, and -1 padding only past the eligible ones."""
    table = make_table(contents, grow)
    cat = table.catalogue()
    k = 5
    rng = np.random.default_rng(1)
    live = torch.nonzero(cat.live).squeeze(1).numpy()
    exclude = torch.full((4, len(live)), -1, dtype=torch.int64)
    for b, n_excluded in enumerate([len(live) - k, len(live) - 3, 0, len(live)]):
        exclude[b, :n_excluded] = torch.as_tensor(rng.permutation(live)[:n_excluded])
    if grow:
        exclude[2, 0] = N_ITEMS + 2  # excluding a dead row changes nothing
    config = DecodingConfig(beam_width=2, dense_weight=dense_weight, dense_candidates=1)
    rows, scores = recommend_top_k(contents.generator, HISTORY, cat, k, config, exclude=exclude)
    assert rows.shape == scores.shape == (4, k)
    want = eligible_rows(cat, exclude)
    assert [len(w) for w in want] == [5, 3, len(live), 0]
    for b in range(4):
        n = min(k, len(want[b]))
        got = rows[b, :n].tolist()
        assert len(set(got)) == n and set(got) <= want[b]
        assert (rows[b, n:] == -1).all() and torch.isneginf(scores[b, n:]).all()
        assert torch.isfinite(scores[b, :n]).all()
        assert (scores[b, :n].diff() <= 0).all()
    assert set(rows[0].tolist()) == want[0]  # exactly the 5 eligible rows
    assert set(rows[1, :3].tolist()) == want[1]


def test_no_excluded_or_dead_row_is_returned(contents):
    table = make_table(contents, grow=True)
    # Give the retired row (N + 2) a vector every user loves: were it not blocked, the dense
    # head would rank it first. Its replacement (N + 4) gets the same vector.
    cat0 = table.catalogue()
    mean_state = state_of(contents.generator, HISTORY, cat0).mean(0)
    table.vectors[N_ITEMS + 2] = mean_state * 50
    table.vectors[N_ITEMS + 4] = mean_state * 50
    cat = table.catalogue()
    rng = np.random.default_rng(2)
    exclude = torch.as_tensor(rng.integers(1, N_ITEMS + 1, size=(4, 6)))
    exclude[0, :2] = -1
    for w in (0.0, 0.5, 1.0):
        config = DecodingConfig(beam_width=8, dense_weight=w, dense_candidates=8)
        rows, _ = recommend_top_k(contents.generator, HISTORY, cat, 8, config, exclude=exclude)
        for b in range(4):
            got = rows[b].tolist()
            assert -1 not in got and 0 not in got and len(set(got)) == 8
            assert not set(got) & set(exclude[b].tolist())
            assert N_ITEMS + 2 not in got  # dead
            assert all(cat.live[r] for r in got)
        if w == 1.0:
            assert (rows[:, 0] == N_ITEMS + 4).all()
        cands = find_candidates(contents.generator, HISTORY, cat, config, exclude, top_k=8)
        real = cands.rows >= 0
        assert not (cands.eligible & ~real).any()
        dead_or_excluded = ~cat.live[cands.rows.clamp(min=0)] | (
            cands.rows[:, :, None] == exclude[:, None, :]
        ).any(-1)
        assert not (cands.eligible & dead_or_excluded).any()
        assert torch.isneginf(cands.scores(w)[~cands.eligible]).all()


def test_small_catalogue_pads_with_minus_one():
    small = tiny_contents(n_items=5, budget=2, seed=6)
    index = build_prefix_index(small.item_tokens[1:], np.arange(1, 6), small.layout.vocab_size)
    cat = ItemTable(small.item_vectors, small.item_tokens, index).catalogue()
    history = torch.tensor([[0, 1, 2], [0, 0, 3]])
    for w in (0.0, 0.5, 1.0):
        config = DecodingConfig(beam_width=3, dense_weight=w, dense_candidates=2)
        rows, scores = recommend_top_k(small.generator, history, cat, 8, config)
        assert rows.shape == (2, 8)
        assert [sorted(r) for r in rows[:, :5].tolist()] == [[1, 2, 3, 4, 5]] * 2
        assert (rows[:, 5:] == -1).all() and torch.isneginf(scores[:, 5:]).all()


# ---- the mixed score ------------------------------------------------------------------------


def test_dense_weight_one_ranks_by_the_dense_head(contents):
    table = make_table(contents, grow=True)
    cat = table.catalogue()
    gen = contents.generator
    exclude = torch.tensor([[3, 4, 5], [1, 2, -1], [9, -1, -1], [-1, -1, -1]])
    config = DecodingConfig(beam_width=4, dense_weight=1.0, dense_candidates=4)
    k = 6
    rows, scores = recommend_top_k(gen, HISTORY, cat, k, config, exclude=exclude)
    dense = Generator.dense_log_probs(state_of(gen, HISTORY, cat), cat.item_vectors)
    blocked = ~cat.live[None].expand(4, -1).clone()
    blocked.scatter_(1, exclude.clamp(min=0), True)
    want_scores, want_rows = dense.masked_fill(blocked, NEG_INF).topk(k, dim=1)
    assert torch.equal(rows, want_rows)
    # The same numbers up to the softmax's normaliser (one constant per request).
    offset = scores - want_scores
    torch.testing.assert_close(offset, offset[:, :1].expand(-1, k), rtol=0, atol=1e-5)
    # No beam search is run at w = 1: there are no generative scores.
    cands = find_candidates(gen, HISTORY, cat, config, exclude, top_k=k)
    assert cands.generative is None
    with pytest.raises(ValueError, match="generative"):
        cands.scores(0.5)


def test_exact_scores_at_w0_are_a_distribution_over_live_rows(contents):
    table = make_table(contents, grow=True)
    cat = table.catalogue()
    scores = exact_scores(contents.generator, HISTORY, cat, 0.0, chunk_sequences=12)
    assert scores.shape == (4, N_ITEMS + 5)
    live = cat.live
    assert torch.isneginf(scores[:, ~live]).all()  # row 0 and the retired row
    assert torch.isfinite(scores[:, live]).all()
    total = scores[:, live].double().exp().sum(1)
    # float32 scores: a sum of ~20 exp'd terms is exact to a few float32 ulps, not 1e-7
    # (the float64 default), and which ulp depends on the thread count's reduction order.
    torch.testing.assert_close(total, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)
    # Chunking does not change anything.
    torch.testing.assert_close(exact_scores(contents.generator, HISTORY, cat, 0.0), scores)
    # w mixes the two: the score at w is (1 - w) gen + w dense on every live row.
    dense = exact_scores(contents.generator, HISTORY, cat, 1.0)
    mixed = exact_scores(contents.generator, HISTORY, cat, 0.3)
    torch.testing.assert_close(mixed[:, live], 0.7 * scores[:, live] + 0.3 * dense[:, live])


def test_exact_log_probs_are_the_two_heads(contents):
    table = make_table(contents, grow=True)
    cat = table.catalogue()
    gen = contents.generator
    dense, generative = exact_log_probs(gen, HISTORY, cat)
    live = cat.live
    assert dense.shape == generative.shape == (4, N_ITEMS + 5)
    assert torch.isneginf(dense[:, ~live]).all() and torch.isneginf(generative[:, ~live]).all()
    # The dense part ranks live rows as the dense head does.
    want = Generator.dense_log_probs(state_of(gen, HISTORY, cat), cat.item_vectors)
    offset = dense[:, live] - want[:, live]
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=0, atol=1e-5)
    # The generative part is teacher forcing of every live row.
    rows = torch.nonzero(live).squeeze(1)[None].expand(4, -1)
    torch.testing.assert_close(
        generative[:, live], generative_log_probs(gen, state_of(gen, HISTORY, cat), rows, cat)
    )
    only_dense, none = exact_log_probs(gen, HISTORY, cat, generative=False)
    assert none is None and torch.equal(only_dense, dense)
    for w in (0.0, 0.4, 1.0):
        torch.testing.assert_close(exact_scores(gen, HISTORY, cat, w), mix(dense, generative, w))


def test_mix():
    dense = torch.tensor([[-1.0, -2.0, NEG_INF]])
    gen = torch.tensor([[-3.0, NEG_INF, -0.5]])
    assert torch.equal(mix(dense, gen, 1.0), dense)
    assert torch.equal(mix(dense, None, 1.0), dense)  # w = 1 needs no generative scores
    assert torch.equal(mix(dense, gen, 0.0), gen)  # w = 0 ignores -inf dense scores
    torch.testing.assert_close(mix(dense, gen, 0.25), torch.tensor([[-2.5, NEG_INF, NEG_INF]]))
    with pytest.raises(ValueError, match="generative"):
        mix(dense, None, 0.5)


def test_recommend_at_w1_is_the_top_k_of_exact_scores(contents):
    cat = make_table(contents, grow=True).catalogue()
    config = DecodingConfig(beam_width=3, dense_weight=1.0, dense_candidates=3)
    rows, scores = recommend_top_k(contents.generator, HISTORY, cat, 7, config)
    want_scores, want_rows = exact_scores(contents.generator, HISTORY, cat, 1.0).topk(7, dim=1)
    assert torch.equal(rows, want_rows)
    torch.testing.assert_close(scores, want_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dense_weight", [0.0, 0.3, 0.8])
def test_a_beam_as_wide_as_the_catalogue_gives_the_exact_top_k(contents, dense_weight):
    cat = make_table(contents, grow=True).catalogue()
    n = cat.n_rows
    config = DecodingConfig(beam_width=n, dense_weight=dense_weight, dense_candidates=1)
    exclude = torch.tensor([[3, 4, 5], [-1, -1, -1], [9, 18, -1], [1, 2, 3]])
    rows, scores = recommend_top_k(contents.generator, HISTORY, cat, 6, config, exclude=exclude)
    exact = exact_scores(contents.generator, HISTORY, cat, dense_weight)
    exact = exact.scatter(1, exclude.clamp(min=0), NEG_INF)
    want_scores, want_rows = exact.topk(6, dim=1)
    assert torch.equal(rows, want_rows)
    torch.testing.assert_close(scores, want_scores, rtol=0, atol=1e-5)


def test_generative_scores_are_what_the_beam_search_reaches(contents):
    cat = make_table(contents, grow=True).catalogue()
    gen = contents.generator
    state = state_of(gen, HISTORY, cat)

    def step(tokens, s):
        return gen.next_token_log_probs(state, tokens[:, :, 1:]), s

    items, beam_scores, _ = constrained_beam_search(step, cat.index, 4, 6, 6)
    assert (items > 0).all()
    teacher = generative_log_probs(gen, state, items, cat)
    torch.testing.assert_close(teacher, beam_scores, rtol=0, atol=1e-5)
    # The candidates carry the same numbers for the rows the beam found.
    config = DecodingConfig(beam_width=6, dense_weight=0.5, dense_candidates=2)
    cands = find_candidates(gen, HISTORY, cat, config)
    for b in range(4):
        for item, score in zip(items[b].tolist(), beam_scores[b].tolist(), strict=True):
            slot = (cands.rows[b] == item).nonzero()
            assert slot.numel() == 1
            assert cands.generative[b, slot[0, 0]].item() == pytest.approx(score, abs=1e-5)
    # Every slot, found by the beam or only by the dense head, carries teacher forcing's
    # number (the beam's rows reuse the beam's score, the others are teacher-forced).
    narrow = find_candidates(gen, HISTORY, cat, replace(config, beam_width=2, dense_candidates=5))
    live = narrow.rows >= 0
    forced = generative_log_probs(gen, state, narrow.rows.clamp(min=0), cat)
    torch.testing.assert_close(narrow.generative[live], forced[live], rtol=0, atol=1e-5)
    assert torch.isneginf(narrow.generative[~live]).all()
    # Rows outside the index (padding, retired) have no generative probability.
    odd = torch.tensor([[0, N_ITEMS + 2, 1]]).expand(4, -1)
    got = generative_log_probs(gen, state, odd, cat)
    assert torch.isneginf(got[:, :2]).all() and torch.isfinite(got[:, 2]).all()


def test_candidates_scores_and_top_k_of():
    cands = Candidates(
        rows=torch.tensor([[4, 2, -1, 7]]),
        generative=torch.tensor([[-1.0, -3.0, NEG_INF, -0.5]]),
        dense=torch.tensor([[-2.0, -0.5, NEG_INF, -4.0]]),
        eligible=torch.tensor([[True, True, False, False]]),
    )
    torch.testing.assert_close(
        cands.scores(0.25), torch.tensor([[-1.25, -2.375, NEG_INF, NEG_INF]])
    )
    assert torch.equal(cands.scores(0.0), torch.tensor([[-1.0, -3.0, NEG_INF, NEG_INF]]))
    assert torch.equal(cands.scores(1.0), torch.tensor([[-2.0, -0.5, NEG_INF, NEG_INF]]))
    rows, scores = top_k_of(cands, 1.0, 3)
    assert rows.tolist() == [[2, 4, -1]] and scores[0, 2] == NEG_INF
    rows, _ = top_k_of(cands, 0.0, 6)  # more than the candidate slots: padded
    assert rows.tolist() == [[4, 2, -1, -1, -1, -1]]
    with pytest.raises(ValueError, match="top_k"):
        top_k_of(cands, 0.5, 0)


def test_argument_checks(contents):
    cat = make_table(contents).catalogue()
    for bad in ({"dense_weight": 1.5}, {"dense_weight": -0.1}, {"beam_width": 0}):
        with pytest.raises(ValueError):
            DecodingConfig(**bad)
    with pytest.raises(ValueError, match="dense_candidates"):
        DecodingConfig(dense_candidates=True)
    with pytest.raises(ValueError, match="exclude"):
        recommend_top_k(
            contents.generator, HISTORY, cat, 3, DecodingConfig(), exclude=HISTORY.int()
        )


# --- new-item share ------------------------------------------------------------------


def test_shared_softmax_gives_id_free_rows_exactly_their_share(contents):
    table = make_table(contents, grow=True)  # added rows are id-free
    cat = table.catalogue()
    state = state_of(contents.generator, HISTORY, cat)
    share = 0.3
    log_p = dense_log_probs(state, cat, share)
    p = log_p.exp()
    new = cat.id_free & cat.live
    torch.testing.assert_close(p.sum(1), torch.ones(len(HISTORY)))
    torch.testing.assert_close(p[:, new].sum(1), torch.full((len(HISTORY),), share))
    assert torch.isneginf(log_p[:, ~cat.live]).all()  # retired and padding rows stay out
    # Within each part the order is the plain softmax's: only the parts' masses move.
    plain = dense_log_probs(state, cat)
    for part in (new, cat.live & ~new):
        diff = (log_p - plain)[:, part]
        torch.testing.assert_close(diff, diff[:, :1].expand_as(diff))


def test_no_share_or_no_id_free_rows_is_the_plain_softmax(contents):
    grown = make_table(contents, grow=True).catalogue()
    state = state_of(contents.generator, HISTORY, grown)
    torch.testing.assert_close(dense_log_probs(state, grown, None), dense_log_probs(state, grown))
    bundle_only = make_table(contents).catalogue()  # nothing added: no id-free row
    assert not bundle_only.id_free.any()
    torch.testing.assert_close(
        dense_log_probs(state, bundle_only, 0.5), dense_log_probs(state, bundle_only)
    )


def test_a_large_share_puts_a_new_item_in_the_top_k(contents):
    table = make_table(contents, grow=True)
    cat = table.catalogue()
    config = DecodingConfig(beam_width=4, dense_weight=1.0, dense_candidates=4)
    rows, _ = recommend_top_k(contents.generator, HISTORY, cat, 3, config)
    shared = replace(config, new_item_share=0.9)
    rows_shared, _ = recommend_top_k(contents.generator, HISTORY, cat, 3, shared)
    new_rows = set(torch.nonzero(cat.id_free & cat.live).flatten().tolist())
    # At 0.9 the live added rows hold 90% of the mass: every list leads with one of them.
    assert all(int(r[0]) in new_rows for r in rows_shared)
    assert len(rows_shared[0]) == 3 and (rows_shared >= 0).all()
    assert not torch.equal(rows, rows_shared)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, True])
def test_new_item_share_must_lie_strictly_between_0_and_1(share):
    with pytest.raises(ValueError, match="new_item_share"):
        DecodingConfig(new_item_share=share)


def test_item_table_marks_added_rows_and_the_bundles_id_free_rows(contents):
    index = build_prefix_index(
        contents.item_tokens[1:], np.arange(1, N_ITEMS + 1), contents.layout.vocab_size
    )
    base = np.zeros(N_ITEMS + 1, dtype=bool)
    base[[2, 5]] = True
    table = ItemTable(contents.item_vectors, contents.item_tokens, index, base_id_free=base)
    assert torch.nonzero(table.catalogue().id_free).flatten().tolist() == [2, 5]
    toks = fresh_tokens(contents, [1, 2])
    table.add(np.zeros((2, 16), np.float32), toks)
    assert torch.nonzero(table.catalogue().id_free).flatten().tolist() == [
        2,
        5,
        N_ITEMS + 1,
        N_ITEMS + 2,
    ]
    with pytest.raises(ValueError, match="base_id_free"):
        ItemTable(contents.item_vectors, contents.item_tokens, index, base_id_free=base[:-1])


def test_the_share_moves_the_generative_score_of_each_row_as_it_moves_the_dense_one(contents):
    cat = make_table(contents, grow=True).catalogue()
    dense_s, gen_s = exact_log_probs(contents.generator, HISTORY, cat, new_item_share=0.3)
    dense_p, gen_p = exact_log_probs(contents.generator, HISTORY, cat)
    live = cat.live
    moved = (dense_s - dense_p)[:, live]
    assert moved.abs().max() > 0.1  # the share did move something
    torch.testing.assert_close((gen_s - gen_p)[:, live], moved)
