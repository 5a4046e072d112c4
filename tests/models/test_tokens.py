from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.placement import (
    MAX_PLACEMENT_STEPS,
    placement_order,
    placement_prefix,
    placement_steps,
    placement_width,
)
from models.tokens import (
    BOS,
    CF,
    EOS,
    N_SPECIAL,
    PAD,
    SEM,
    TokenLayout,
    assign_dedup,
    cf_first,
    code_sequences,
    collision_rate,
    collision_rates_by_split,
    item_tokens,
    max_dedup_needed,
    served_positions,
)


def reference_dedup(rows: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... per group of identical rows, lowest row first (a plain loop)."""
    seen: Counter = Counter()
    out = []
    for row in map(tuple, rows):
        out.append(seen[row])
        seen[row] += 1
    return np.array(out, dtype=np.int64)


@st.composite
def catalogues(draw):
    """Small code arrays with many duplicates (K <= 3), a budget and a router split."""
    n_levels = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    n_items = draw(st.integers(0, 25))
    codes = st.lists(
        st.lists(st.integers(0, k - 1), min_size=n_levels, max_size=n_levels),
        min_size=n_items,
        max_size=n_items,
    )
    cf = np.array(draw(codes), dtype=np.int64).reshape(n_items, n_levels)
    sem = np.array(draw(codes), dtype=np.int64).reshape(n_items, n_levels)
    budget = draw(st.integers(1, n_levels))
    if draw(st.booleans()):
        n_cf = np.array(
            draw(st.lists(st.integers(0, budget), min_size=n_items, max_size=n_items)),
            dtype=np.int64,
        )
    else:  # the same split for every item
        n_cf = draw(st.integers(0, budget))
    layout = TokenLayout(codebook_size=k, n_levels=n_levels, dedup_size=max(n_items, 1))
    return cf, sem, n_cf, budget, layout


@settings(max_examples=150, deadline=None)
@given(catalogues())
def test_item_tokens_are_unique_and_decode_to_their_codes(case):
    cf, sem, n_cf, budget, layout = case
    n_items = cf.shape[0]
    tokens = item_tokens(cf, sem, n_cf, budget, layout)
    assert tokens.shape == (n_items, budget + 1)  # every item has exactly L + 1 tokens
    assert np.unique(tokens, axis=0).shape[0] == n_items
    assert ((tokens >= N_SPECIAL) & (tokens < layout.vocab_size)).all()

    info = layout.describe(tokens)
    n_cf_items = np.broadcast_to(n_cf, (n_items,))[:, None]  # (N, 1)
    n_sem_items = budget - n_cf_items
    pos = np.arange(budget)[None, :]  # (1, L)
    # The dominant codebook comes first; a tie (n_cf = L / 2) goes to CF.
    first_cf = n_cf_items >= n_sem_items  # (N, 1)
    n_first = np.where(first_cf, n_cf_items, n_sem_items)
    from_cf = np.where(pos < n_first, first_cf, ~first_cf)
    assert (info["kind"][:, :budget] == 1).all()
    assert (info["codebook"][:, :budget] == np.where(from_cf, CF, SEM)).all()
    level = np.where(pos < n_first, pos, pos - n_first)
    assert (info["level"][:, :budget] == level).all()
    # every item holds exactly its n_cf CF levels 0..n_cf-1 and L - n_cf SEM levels
    assert ((info["codebook"][:, :budget] == CF).sum(axis=1) == n_cf_items[:, 0]).all()
    rows = np.arange(n_items)[:, None]
    expected_code = np.where(from_cf, cf[rows, level], sem[rows, level])
    assert (info["code"][:, :budget] == expected_code).all()
    np.testing.assert_array_equal(cf_first(n_cf_items[:, 0], budget), first_cf[:, 0])
    assert (info["dedup"][:, :budget] == -1).all()
    # the last token is the dedup token, numbered as TIGER does
    assert (info["kind"][:, budget] == 2).all()
    assert (info["codebook"][:, budget] == -1).all() and (info["code"][:, budget] == -1).all()
    assert (info["dedup"][:, budget] == reference_dedup(tokens[:, :budget])).all()

    prefixes = code_sequences(cf, sem, n_cf, budget, layout)
    assert (prefixes == tokens[:, :budget]).all()
    assert max_dedup_needed(prefixes) == (info["dedup"][:, budget].max() + 1 if n_items else 0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 2), min_size=2, max_size=2), max_size=30),
    st.data(),
)
def test_assign_dedup_with_existing_continues_numbering(rows, data):
    rows = np.array(rows, dtype=np.int64).reshape(-1, 2)
    split = data.draw(st.integers(0, rows.shape[0]))
    full = assign_dedup(rows)
    assert (full == reference_dedup(rows)).all()
    old = rows[:split]
    continued = assign_dedup(rows[split:], existing=(old, assign_dedup(old)))
    assert (continued == full[split:]).all()


def test_assign_dedup_continues_after_the_largest_taken_id():
    existing = (np.array([[1, 2], [1, 2], [7, 7]]), np.array([0, 3, 0]))
    new = np.array([[1, 2], [5, 5], [1, 2], [7, 7]])
    # gaps are not refilled: an id once given out may still sit in a cache
    assert assign_dedup(new, existing=existing).tolist() == [4, 0, 5, 1]
    with pytest.raises(ValueError, match="same \\(row, dedup id\\) twice"):
        assign_dedup(new, existing=(np.array([[1, 2], [1, 2]]), np.array([0, 0])))
    with pytest.raises(ValueError, match="tokens"):
        assign_dedup(new, existing=(np.array([[1, 2, 3]]), np.array([0])))


def test_vocab_blocks_do_not_overlap_and_cover_the_vocabulary():
    layout = TokenLayout(codebook_size=5, n_levels=3, dedup_size=4)
    codebook, level, code = np.meshgrid([CF, SEM], range(3), range(5), indexing="ij")
    code_ids = layout.code_token(codebook, level, code).ravel()
    dedup_ids = layout.dedup_token(np.arange(4))
    all_ids = np.concatenate([[PAD, BOS, EOS], code_ids, dedup_ids])
    assert sorted(all_ids.tolist()) == list(range(layout.vocab_size))
    assert layout.vocab_size == N_SPECIAL + 2 * 3 * 5 + 4
    assert layout.dedup_offset == N_SPECIAL + 30
    # CF level 0 first, then CF levels, then SEM levels
    assert layout.code_token(CF, 0, 0) == N_SPECIAL
    assert layout.code_token(SEM, 0, 0) == N_SPECIAL + 15
    info = layout.describe(code_ids)
    assert (info["kind"] == 1).all()
    assert (info["codebook"] == codebook.ravel()).all()
    assert (info["level"] == level.ravel()).all()
    assert (info["code"] == code.ravel()).all()
    special = layout.describe([PAD, BOS, EOS])
    assert (special["kind"] == 0).all() and (special["level"] == -1).all()


def test_hand_built_sequences():
    layout = TokenLayout(codebook_size=4, n_levels=3, dedup_size=2)
    cf = np.array([[0, 1, 2], [0, 1, 2], [3, 3, 3]])
    sem = np.array([[1, 1, 1], [1, 1, 1], [2, 2, 2]])
    # CF level l code c -> 3 + 4 l + c; SEM level l code c -> 15 + 4 l + c
    assert code_sequences(cf, sem, np.array([1, 2, 0]), 3, layout).tolist() == [
        [16, 20, 3],  # n_cf = 1 of 3: SEM dominates, SEM levels 0 and 1, then CF level 0
        [3, 8, 16],  # n_cf = 2 of 3: CF levels 0 and 1, then SEM level 0
        [17, 21, 25],  # n_cf = 0: SEM levels 0, 1, 2
    ]
    assert code_sequences(cf, sem, 3, 3, layout).tolist() == [[3, 8, 13], [3, 8, 13], [6, 10, 14]]
    dedup0 = layout.dedup_offset
    assert item_tokens(cf, sem, 2, 2, layout).tolist() == [
        [3, 8, dedup0],
        [3, 8, dedup0 + 1],
        [6, 10, dedup0],
    ]


@pytest.mark.parametrize(
    ("budget", "n_cf", "want"),
    [
        (3, [0, 1, 2, 3], [False, False, True, True]),
        (2, [0, 1, 2], [False, True, True]),  # the tie L / 2 goes to CF
        (4, [1, 2, 3], [False, True, True]),
        (1, [0, 1], [False, True]),
    ],
)
def test_cf_first_is_the_dominant_codebook(budget, n_cf, want):
    assert cf_first(np.array(n_cf), budget).tolist() == want


def test_first_token_names_the_dominant_codebook():
    """The router's choice is the first token: head items start with a CF code, tail and
    new items with a SEM code; a tie (L even, n_cf = L / 2) starts with CF."""
    layout = TokenLayout(codebook_size=4, n_levels=4, dedup_size=1)
    cf = np.tile([[1, 2, 3, 0]], (5, 1))
    sem = np.tile([[3, 2, 1, 0]], (5, 1))
    seqs = code_sequences(cf, sem, np.arange(5), 4, layout)  # n_cf = 0 .. 4
    info = layout.describe(seqs)
    assert info["codebook"][:, 0].tolist() == [SEM, SEM, CF, CF, CF]
    assert info["codebook"].tolist() == [
        [SEM, SEM, SEM, SEM],
        [SEM, SEM, SEM, CF],
        [CF, CF, SEM, SEM],
        [CF, CF, CF, SEM],
        [CF, CF, CF, CF],
    ]
    # each codebook's levels appear in order 0, 1, 2, ... (a prefix of the levels)
    assert info["level"].tolist() == [
        [0, 1, 2, 3],
        [0, 1, 2, 0],
        [0, 1, 0, 1],
        [0, 1, 2, 0],
        [0, 1, 2, 3],
    ]
    # same codes, different splits: never the same sequence
    assert np.unique(seqs, axis=0).shape[0] == 5


def test_dedup_overflow_says_how_large_dedup_size_must_be():
    layout = TokenLayout(codebook_size=4, n_levels=2, dedup_size=2)
    cf = np.zeros((5, 2), dtype=np.int64)
    sem = np.zeros((5, 2), dtype=np.int64)
    sem[4] = 1  # 4 colliding items, 1 alone
    with pytest.raises(ValueError, match="dedup_size must be at least 4"):
        item_tokens(cf, sem, 0, 2, layout)
    assert max_dedup_needed(code_sequences(cf, sem, 0, 2, layout)) == 4
    assert item_tokens(cf, sem, 0, 2, TokenLayout(4, 2, dedup_size=4)).shape == (5, 3)
    with pytest.raises(ValueError, match="at least 3"):
        layout.dedup_token(2)


def test_collision_rate_hand_case():
    rows = np.array([[1, 2], [3, 4], [1, 2], [5, 6], [5, 6], [5, 6], [7, 8], [2, 1]])
    assert collision_rate(rows) == pytest.approx(5 / 8)
    assert collision_rate(np.zeros((0, 3), dtype=np.int64)) == 0.0
    assert max_dedup_needed(rows) == 3

    layout = TokenLayout(codebook_size=4, n_levels=2, dedup_size=4)
    cf = np.array([[0, 0], [0, 0], [1, 0], [2, 0]])  # items 0 and 1 share CF codes
    sem = np.array([[0, 1], [1, 1], [0, 1], [0, 1]])  # items 0, 2, 3 share SEM codes
    assert collision_rates_by_split(cf, sem, 2, layout) == pytest.approx(
        {0: 3 / 4, 1: 0.0, 2: 2 / 4}
    )


def test_invalid_inputs_raise_helpful_errors():
    layout = TokenLayout(codebook_size=4, n_levels=2, dedup_size=2)
    cf = np.zeros((3, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="budget must lie in"):
        code_sequences(cf, cf, 0, 3, layout)
    with pytest.raises(ValueError, match="n_cf must lie in"):
        code_sequences(cf, cf, np.array([0, 1, 3]), 2, layout)
    with pytest.raises(ValueError, match="integers"):
        code_sequences(cf, cf, np.array([0.0, 1.0, 1.0]), 2, layout)
    with pytest.raises(ValueError, match="code must lie in"):
        code_sequences(cf + 4, cf, 2, 2, layout)
    with pytest.raises(ValueError, match="same N"):
        code_sequences(cf, cf[:2], 0, 2, layout)
    with pytest.raises(ValueError, match="vocab_size"):
        layout.describe([layout.vocab_size])
    with pytest.raises(ValueError, match="positive int"):
        TokenLayout(codebook_size=0, n_levels=2, dedup_size=2)


def test_layout_round_trips_through_a_dict():
    layout = TokenLayout(codebook_size=512, n_levels=5, dedup_size=16)
    assert TokenLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="missing keys"):
        TokenLayout.from_dict({"codebook_size": 512})


def ranked_with_own_first(codes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(N, L) codes -> (N, L, K): each level's codes, own first, the others shuffled."""
    out = np.zeros((*codes.shape, k), dtype=np.int64)
    for idx in np.ndindex(codes.shape):
        others = [c for c in rng.permutation(k) if c != codes[idx]]
        out[idx] = [codes[idx], *others]
    return out


@settings(max_examples=40, deadline=None)
@given(catalogues(), st.integers(0, 2**31))
def test_placement_order_starts_at_the_code_sequence(case, seed):
    cf, sem, n_cf, budget, layout = case
    rng = np.random.default_rng(seed)
    k = layout.codebook_size
    cf_ranked = ranked_with_own_first(cf, k, rng)
    sem_ranked = ranked_with_own_first(sem, k, rng)
    order = placement_order(cf_ranked, sem_ranked, n_cf, budget, layout)
    assert order.shape == (cf.shape[0], budget, k)
    prefixes = code_sequences(cf, sem, n_cf, budget, layout)
    np.testing.assert_array_equal(order[:, :, 0], prefixes)
    # Each position ranks the codes of its own block, in the ranking it was given.
    from_cf, level = served_positions(np.broadcast_to(n_cf, (cf.shape[0],)), budget)
    info = layout.describe(order)
    rows = np.arange(cf.shape[0])[:, None]
    want = np.where(from_cf[..., None], cf_ranked[rows, level], sem_ranked[rows, level])
    np.testing.assert_array_equal(info["code"], want)
    codebook = np.broadcast_to(np.where(from_cf, CF, SEM)[..., None], want.shape)
    np.testing.assert_array_equal(info["codebook"], codebook)


def test_placement_prefix_is_an_odometer_over_every_code_sequence():
    order = np.array([[10, 11, 12], [20, 21, 22]])  # L = 2 positions, K = 3 ranked codes
    steps = [placement_prefix(order, s) for s in range(placement_steps(order))]
    assert placement_steps(order) == 9
    assert steps[0] == (10, 20)  # own codes
    assert steps[1:3] == [(10, 21), (10, 22)]  # the last position turns first, nearest first
    assert steps[3] == (11, 20)  # then the position before it moves to its second code
    assert len(set(steps)) == 9  # every sequence once
    assert placement_prefix(order.tolist(), 5) == placement_prefix(order, 5) == (11, 22)
    assert placement_steps([[1], [2], [3]]) == 1  # an item sent without an order


def test_placement_steps_are_bounded():
    wide = np.zeros((3, 512), dtype=np.int64)  # 512^3 sequences
    assert placement_steps(wide) == MAX_PLACEMENT_STEPS


def test_placement_order_checks_shapes():
    layout = TokenLayout(codebook_size=4, n_levels=2, dedup_size=2)
    good = np.zeros((3, 2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="cf_ranked and sem_ranked"):
        placement_order(good[:, :, :3], good[:, :, :3], 0, 2, layout)
    with pytest.raises(ValueError, match="cf_ranked and sem_ranked"):
        placement_order(good[:, :1], good[:, :1], 0, 2, layout)


@pytest.mark.parametrize(
    ("k", "budget", "want"), [(512, 3, 26), (512, 1, 512), (512, 2, 128), (8, 3, 8), (256, 5, 7)]
)
def test_placement_width_spans_the_step_bound(k, budget, want):
    width = placement_width(k, budget)
    assert width == want
    assert width == k or width**budget >= MAX_PLACEMENT_STEPS > (width - 1) ** budget
