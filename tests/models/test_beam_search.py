"""The constrained beam-search kernel against a plain per-beam trie search (the reference).

The reference (`models.reference_beam_search`) is how constrained decoding is usually
written with HF `prefix_allowed_tokens_fn`; its docstring says how it must agree with the
kernel: items, their order and their tokens exactly, scores to ~1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.beam_search import (
    TOPK_GROUP,
    TOPK_MIN_GROUPS_PER_K,
    _select,
    _top_k,
    constrained_beam_search,
    restrict,
    sequence_log_probs,
)
from models.overlay_index import OverlayIndex
from models.prefix_index import build_prefix_index
from models.reference_beam_search import reference_beam_search
from models.tokens import BOS
from tests.models.test_prefix_index import random_catalog


def make_table_model(seed: int, depth: int, vocab: int, quantise: bool = False):
    """A fixed random "model": log-probs depend on (position, last token) only.

    Returns step_fn(tokens (B, W, 1 + t), state) -> ((B, W, V) float32 log-probs, state).
    quantise: logits on a coarse integer grid, so many candidates tie exactly.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(depth, vocab, vocab, generator=gen) * 2
    if quantise:
        logits = (logits > 1).float() * 3  # two logit values: ties everywhere
    table = torch.log_softmax(logits, dim=-1)  # (depth, V, V)

    def step_fn(tokens: torch.Tensor, state):
        t = tokens.shape[-1] - 1
        return table[t][tokens[..., -1]], state

    return step_fn


SCORE_ATOL = 1e-5


def assert_matches_reference(got, want, rows, ids):
    items, scores, tokens = got
    row_of = {int(i): tuple(r) for r, i in zip(rows.tolist(), ids.tolist(), strict=True)}
    for b, ref in enumerate(want):
        n = len(ref)
        assert items[b, :n].tolist() == [r[0] for r in ref]
        np.testing.assert_allclose(
            scores[b, :n].numpy(), [r[1] for r in ref], rtol=0, atol=SCORE_ATOL
        )
        assert [tuple(x) for x in tokens[b, :n].tolist()] == [r[2] for r in ref]
        for item, toks in zip(items[b, :n].tolist(), tokens[b, :n].tolist(), strict=True):
            assert row_of[item] == tuple(toks)  # a real item, with its own tokens
        assert (items[b, n:] == -1).all() and (tokens[b, n:] == -1).all()
        assert torch.isneginf(scores[b, n:]).all()
        assert (scores[b, 1:n] <= scores[b, : n - 1]).all()
        assert (scores[b, :n] <= 0).all()  # log-probabilities of items
        # The kernel's own tie rule on its own scores: equal scores, lower item id first.
        tied = scores[b, 1:n] == scores[b, : n - 1]
        assert (items[b, 1:n][tied] > items[b, : n - 1][tied]).all()


@pytest.mark.parametrize(
    ("seed", "beam_width", "top_k", "quantise"),
    [(0, 5, 5, False), (1, 8, 3, False), (2, 12, 10, True), (3, 4, 4, True), (4, 20, 7, False)],
)
def test_matches_reference(seed, beam_width, top_k, quantise):
    rows, ids, vocab = random_catalog(seed, n=50 + 50 * seed)
    index = build_prefix_index(rows, ids, vocab)
    step_fn = make_table_model(seed, rows.shape[1], vocab, quantise)
    got = constrained_beam_search(step_fn, index.to_tensors(), 3, beam_width, top_k)
    want = reference_beam_search(step_fn, rows, ids, 3, beam_width, top_k)
    assert_matches_reference(got, want, rows, ids)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_with_exclusions(seed):
    rows, ids, vocab = random_catalog(seed + 10, n=150)
    index = build_prefix_index(rows, ids, vocab)
    step_fn = make_table_model(seed, rows.shape[1], vocab)
    batch, beam_width, top_k = 4, 10, 5
    # Exclude some of each request's unconstrained top items, plus -1 padding.
    plain = constrained_beam_search(step_fn, index.to_tensors(), batch, beam_width, top_k)[0]
    rng = np.random.default_rng(seed)
    exclude = torch.full((batch, 6), -1, dtype=torch.int64)
    exclude[:, :2] = plain[:, :2]
    exclude[:, 2:4] = torch.from_numpy(rng.choice(ids, (batch, 2)))
    exclude[1] = -1  # a request with nothing to exclude
    got = constrained_beam_search(step_fn, index.to_tensors(), batch, beam_width, top_k, exclude)
    want = reference_beam_search(step_fn, rows, ids, batch, beam_width, top_k, exclude)
    assert_matches_reference(got, want, rows, ids)
    for b in range(batch):
        assert not set(got[0][b].tolist()) & (set(exclude[b].tolist()) - {-1})


@pytest.mark.parametrize("seed", range(3))
def test_overlay_and_merged_match_reference(seed):
    rows, ids, vocab = random_catalog(seed + 20, n=200)
    n_base = rows.shape[0] - 25
    ov = OverlayIndex(build_prefix_index(rows[:n_base], ids[:n_base], vocab))
    ov.add(rows[n_base : n_base + 5], ids[n_base : n_base + 5])
    ov.add(rows[n_base + 5 :], ids[n_base + 5 :])
    step_fn = make_table_model(seed, rows.shape[1], vocab)
    want = reference_beam_search(step_fn, rows, ids, 2, 15, 15)
    got_overlay = constrained_beam_search(step_fn, ov.to_tensors(), 2, 15, 15)
    got_merged = constrained_beam_search(step_fn, ov.merged().to_tensors(), 2, 15, 15)
    assert_matches_reference(got_overlay, want, rows, ids)
    assert_matches_reference(got_merged, want, rows, ids)


def test_new_item_is_recommended_at_once():
    """An overlay-only item the model loves comes first, under a new and a shared prefix."""
    rows, ids, vocab = random_catalog(30, n=100)
    base = build_prefix_index(rows, ids, vocab)
    new_rows = np.array([[vocab - 1] * 4, [*rows[0, :3], vocab - 1]])
    ov = OverlayIndex(base)
    ov.add(new_rows, [10**6, 10**6 + 1])
    logits = torch.zeros(4, vocab)
    logits[:, vocab - 1] = 30.0  # the last token is by far the likeliest everywhere
    logp = torch.log_softmax(logits, -1)

    def step_fn(tokens, state):
        return logp[tokens.shape[-1] - 1].expand(*tokens.shape[:2], vocab), state

    items, _, tokens = constrained_beam_search(step_fn, ov.to_tensors(), 1, 4, 2)
    assert items[0].tolist() == [10**6, 10**6 + 1]
    assert tokens[0].tolist() == new_rows.tolist()
    assert base.lookup(new_rows).tolist() == [-1, -1]


def test_exhaustive_small_catalog_and_forbidden_tokens():
    """More beams than items: every item comes back, sorted; -inf tokens drop items."""
    rows, ids, vocab = random_catalog(40, n=12)
    index = build_prefix_index(rows, ids, vocab)
    step_fn = make_table_model(40, rows.shape[1], vocab)
    n = rows.shape[0]
    items, scores, _ = constrained_beam_search(step_fn, index.to_tensors(), 2, n + 5, n + 3)
    assert sorted(items[0, :n].tolist()) == sorted(ids.tolist())
    assert (items[:, n:] == -1).all() and torch.isneginf(scores[:, n:]).all()
    banned = int(rows[0, 1])

    def forbidding(tokens, state):
        logp, state = step_fn(tokens, state)
        return logp.index_fill(2, torch.tensor([banned]), float("-inf")), state

    items = constrained_beam_search(forbidding, index.to_tensors(), 1, n + 5, n + 3)[0]
    kept = ids[rows[:, 1] != banned]
    assert sorted(items[0, : kept.size].tolist()) == sorted(kept.tolist())
    assert (items[0, kept.size :] == -1).all()
    want = reference_beam_search(forbidding, rows, ids, 1, n + 5, n + 3)
    assert items[0, : kept.size].tolist() == [r[0] for r in want[0]]


def test_reorder_state_follows_the_beams():
    """A state holding each beam's token history must equal the tokens step_fn receives,
    and after the last reorder, the returned beams' tokens."""
    rows, ids, vocab = random_catalog(50, n=200)
    index = build_prefix_index(rows, ids, vocab)
    model = make_table_model(50, rows.shape[1], vocab)
    calls = []

    def step_fn(tokens, state):
        if state is not None:
            assert torch.equal(state, tokens[..., :-1])  # the cache followed the parents
        return model(tokens, None)[0], tokens.clone()

    def reorder_state(state, parent):
        calls.append(parent.clone())
        assert parent.shape == (3, 6) and parent.dtype == torch.int64
        assert ((parent >= 0) & (parent < 6)).all()
        return torch.stack([state[b, parent[b]] for b in range(state.shape[0])])

    final = {}

    def recording_reorder(state, parent):
        final["state"] = reorder_state(state, parent)
        return final["state"]

    items, _, tokens = constrained_beam_search(
        step_fn, index.to_tensors(), 3, 6, 4, reorder_state=recording_reorder
    )
    assert len(calls) == rows.shape[1]
    assert (calls[0] == 0).all()  # the first step expands the single BOS beam
    assert (items >= 0).all()
    hist = final["state"][:, :4]  # (B, top_k, depth): BOS + the first depth - 1 tokens
    assert (hist[..., 0] == BOS).all()
    assert torch.equal(hist[..., 1:], tokens[..., :-1])


def test_argument_checks():
    rows, ids, vocab = random_catalog(60, n=50)
    dev = build_prefix_index(rows, ids, vocab).to_tensors()
    step_fn = make_table_model(60, rows.shape[1], vocab)
    with pytest.raises(ValueError, match="top_k"):
        constrained_beam_search(step_fn, dev, 2, 3, 4)
    with pytest.raises(ValueError, match="beam_width"):
        constrained_beam_search(step_fn, dev, 2, 0, 1)
    with pytest.raises(ValueError, match="index_tensors"):
        constrained_beam_search(step_fn, object(), 2, 3, 1)
    with pytest.raises(ValueError, match="exclude"):
        constrained_beam_search(step_fn, dev, 2, 3, 1, exclude=torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="log_probs"):
        constrained_beam_search(lambda t, s: (torch.zeros(2, 3, vocab + 1), s), dev, 2, 3, 1)


@pytest.mark.parametrize(
    ("seed", "wide"), [(s, False) for s in range(20)] + [(s, True) for s in range(8)]
)
def test_select_matches_a_full_stable_sort(seed, wide):
    """topk + boundary-tie fallback = the stable sort the tie rule is defined by. Wide
    rows take the grouped top-k (`_top_k`), odd widths padding; few distinct
    values (even seeds) tie everywhere, many (odd seeds) rarely at the boundary."""
    gen = torch.Generator().manual_seed(seed)
    low, high = (TOPK_GROUP * 6 * TOPK_MIN_GROUPS_PER_K, 2000) if wide else (5, 60)
    rows, n_cand, width = 6, int(torch.randint(low, high, (1,), generator=gen)), 5
    levels = 1000 if wide and seed % 2 else 4
    cand = torch.randint(0, levels, (rows, n_cand), generator=gen).float()
    cand[torch.rand(rows, n_cand, generator=gen) < 0.4] = float("-inf")
    cand[0] = float("-inf")  # no valid candidate at all
    cand[1, width:] = float("-inf")  # exactly `width` candidates may be valid
    key = torch.randperm(n_cand, generator=gen).expand(rows, n_cand).contiguous()
    for k in (None, key):
        val, idx = _select(cand, width, k)
        k_full = torch.arange(n_cand).expand(rows, n_cand) if k is None else k
        by_key = k_full.sort(dim=1, stable=True).indices
        order = by_key.gather(
            1, cand.gather(1, by_key).sort(dim=1, descending=True, stable=True).indices
        )[:, :width]
        want_val = cand.gather(1, order)
        assert torch.equal(val, want_val)
        finite = want_val > float("-inf")  # which invalid candidates fill up is free
        assert torch.equal(idx[finite], order[finite])
        assert torch.equal(cand.gather(1, idx), val)


@pytest.mark.parametrize("n_cand", [TOPK_GROUP * 11 * TOPK_MIN_GROUPS_PER_K * 3, 1601])
def test_grouped_top_k_returns_topks_values(n_cand):
    """The grouped top-k gives topk's values, NaN ranked first as topk ranks it, and only
    in-range indices that hold those values (where finite)."""
    gen = torch.Generator().manual_seed(n_cand)
    cand = torch.randn(5, n_cand, generator=gen)
    cand[1, 7] = float("nan")
    cand[2] = float("-inf")
    cand[3, 3:] = float("-inf")  # fewer valid candidates than k
    cand[4, ::2] = 0.5  # ties
    val, idx = _top_k(cand, 11)
    want = cand.topk(11, dim=1).values
    assert torch.equal(val.nan_to_num(nan=9.0), want.nan_to_num(nan=9.0))
    assert ((idx >= 0) & (idx < n_cand)).all()
    finite = torch.isfinite(val)
    assert torch.equal(cand.gather(1, idx)[finite], val[finite])


def test_empty_overlay_and_nan_log_probs():
    """An empty overlay changes nothing; NaN log-probs are invalid like -inf ones."""
    rows, ids, vocab = random_catalog(70, n=150)
    index = build_prefix_index(rows, ids, vocab)
    model = make_table_model(70, rows.shape[1], vocab)
    bad = torch.rand(rows.shape[1], vocab, generator=torch.Generator().manual_seed(0)) < 0.2

    def with_nan(tokens, state):
        logp = model(tokens, state)[0]
        return logp.masked_fill(bad[tokens.shape[-1] - 1], float("nan")), state

    def with_neg_inf(tokens, state):
        logp = model(tokens, state)[0]
        return logp.masked_fill(bad[tokens.shape[-1] - 1], float("-inf")), state

    got = constrained_beam_search(with_nan, OverlayIndex(index).to_tensors(), 3, 8, 5)
    assert_matches_reference(
        got, reference_beam_search(with_neg_inf, rows, ids, 3, 8, 5), rows, ids
    )
    plain = constrained_beam_search(with_neg_inf, index.to_tensors(), 3, 8, 5)
    assert all(torch.equal(a, b) for a, b in zip(got, plain, strict=True))


def test_padding_slots_read_pad_without_changing_a_shared_table():
    """Padding slots read the PAD column, which the kernel sets to -inf: in a fresh score
    tensor in place, in an expanded view of a caller's table only after a copy. The PAD
    column's own value (here the likeliest token) must not leak into any score."""
    rows, ids, vocab = random_catalog(71, n=120)
    index = build_prefix_index(rows, ids, vocab)
    gen = torch.Generator().manual_seed(71)
    table = torch.log_softmax(torch.randn(rows.shape[1], vocab, generator=gen), dim=-1)
    table[:, 0] = 5.0  # PAD: never a valid token, and larger than any valid one
    before = table.clone()

    def shared(tokens, state):  # an expanded view: one row for every beam
        return table[tokens.shape[-1] - 1].expand(*tokens.shape[:2], vocab), state

    def fresh(tokens, state):
        return table[tokens.shape[-1] - 1].repeat(*tokens.shape[:2], 1), state

    got = constrained_beam_search(shared, index.to_tensors(), 2, 10, 10)
    assert torch.equal(table, before)
    again = constrained_beam_search(fresh, index.to_tensors(), 2, 10, 10)
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True))
    clean = table.clone()
    clean[:, 0] = float("-inf")

    def without_pad(tokens, state):
        return clean[tokens.shape[-1] - 1].expand(*tokens.shape[:2], vocab), state

    assert_matches_reference(
        got, reference_beam_search(without_pad, rows, ids, 2, 10, 10), rows, ids
    )


# ---- the restricted softmax ------------------------------------------------------------


def test_tie_rule_with_a_uniform_model():
    """A uniform model makes exact ties at every depth: earlier steps keep the better
    parent, then the lower token; the last step orders equal scores by item id."""
    rows = np.array(
        [
            [5, 8, 12],
            [5, 8, 13],
            [5, 9, 12],
            [5, 9, 13],
            [6, 8, 12],
            [6, 8, 13],
            [7, 8, 12],
            [7, 8, 13],
        ]
    )
    ids = np.array([9, 3, 7, 6, 4, 2, 0, 1])  # within a leaf node, ids run against tokens
    index = build_prefix_index(rows, ids, 20).to_tensors()

    def uniform(tokens, state):
        return torch.zeros(*tokens.shape[:2], 20), state

    # Width 2: the root keeps tokens 5 and 6 of three tied ones (never 7, whose items 0
    # and 1 have the lowest ids); 6's only child then leads, and its two items tie.
    items, scores, tokens = constrained_beam_search(uniform, index, 1, 2, 2)
    assert items[0].tolist() == [2, 4]
    assert tokens[0].tolist() == [[6, 8, 13], [6, 8, 12]]
    torch.testing.assert_close(scores[0], torch.full((2,), -np.log(6.0)), rtol=0, atol=1e-6)
    # Wide enough for everything: four items tie at log(1/6), four more at log(1/12).
    items, scores, tokens = constrained_beam_search(uniform, index, 1, 8, 8)
    assert items[0].tolist() == [0, 1, 2, 4, 3, 6, 7, 9]
    assert torch.equal(scores[0, :4], scores[0, :1].expand(4))
    assert torch.equal(scores[0, 4:], scores[0, 4:5].expand(4))
    torch.testing.assert_close(
        scores[0].double().exp().sum(), torch.tensor(1.0, dtype=torch.float64)
    )
    want = reference_beam_search(uniform, rows, ids, 1, 8, 8)
    assert_matches_reference((items, scores, tokens), want, rows, ids)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_restrict_is_a_softmax_over_the_valid_entries(dim):
    gen = torch.Generator().manual_seed(dim + 5)
    logits = torch.randn(6, 7, generator=gen) * 3
    invalid = torch.rand(6, 7, generator=gen) < 0.4
    nan = torch.rand(6, 7, generator=gen) < 0.15
    x = logits.masked_fill(invalid, float("-inf")).masked_fill(nan & ~invalid, float("nan"))
    if dim == 0:
        x[:, 2] = float("-inf")  # a slice with no valid entry
        x[0, 3], x[1:, 3] = float("nan"), float("-inf")  # ... and one of NaN and -inf only
    else:
        x[2] = float("-inf")
        x[3, 0], x[3, 1:] = float("nan"), float("-inf")
    out = restrict(x, dim=dim)
    valid = torch.isfinite(x)
    assert out.shape == x.shape and not out.isnan().any()
    assert torch.isneginf(out[~valid]).all()  # invalid (-inf or NaN) entries stay -inf
    total = out.exp().sum(dim=dim)
    has_valid = valid.any(dim=dim)
    torch.testing.assert_close(total[has_valid], torch.ones(int(has_valid.sum())))
    assert (total[~has_valid] == 0).all() and (~has_valid).sum() == 2
    # On the valid entries: the log-softmax of those entries alone, shift-invariant.
    for i in range(x.shape[1 - (dim % 2)]):
        line = x[:, i] if dim == 0 else x[i]
        got = out[:, i] if dim == 0 else out[i]
        keep = torch.isfinite(line)
        if keep.any():
            torch.testing.assert_close(got[keep], torch.log_softmax(line[keep], dim=0))
    shifted = restrict(x + 11.0, dim=dim)
    torch.testing.assert_close(shifted, out)


def test_restricted_scores_do_not_penalise_a_prefix_with_few_children():
    """Item [a, x] is the only item under a: its second token is certain once a is chosen,
    however unlikely the model finds x over the whole vocabulary."""
    vocab, a, b, x, y, z = 10, 3, 4, 5, 6, 7
    rows = np.array([[a, x], [b, y], [b, z]])
    index = build_prefix_index(rows, np.array([1, 2, 3]), vocab).to_tensors()
    probs = torch.full((2, vocab), 1e-3)
    probs[0, [a, b]] = 0.5
    probs[1, [x, y, z]] = torch.tensor([0.1, 0.6, 0.3])  # x is unlikely over the vocabulary
    logp = probs.log()

    def step_fn(tokens, state):
        return logp[tokens.shape[-1] - 1].expand(*tokens.shape[:2], vocab), state

    items, scores, _ = constrained_beam_search(step_fn, index, 1, 3, 3)
    assert items[0].tolist() == [1, 2, 3]  # unrestricted sums would rank item 2 first
    want = np.log([0.5 * 1.0, 0.5 * 0.6 / 0.9, 0.5 * 0.3 / 0.9])
    np.testing.assert_allclose(scores[0].numpy(), want, rtol=0, atol=1e-6)


def teacher_forced(step_fn, rows) -> torch.Tensor:
    """(M, D) rows -> (M, D, V) the table model's log-probs of each token given the ones
    before it (what a decoder gives under teacher forcing)."""
    rows = torch.as_tensor(np.asarray(rows))
    tokens = torch.cat([torch.full((rows.shape[0], 1), BOS), rows.clamp(min=0)], dim=1)
    return torch.stack(
        [step_fn(tokens[None, :, : t + 1], None)[0][0] for t in range(rows.shape[1])], dim=1
    )


def overlay_split(seed: int, n: int = 200, n_added: int = 30):
    rows, ids, vocab = random_catalog(seed, n=n)
    n_base = rows.shape[0] - n_added
    ov = OverlayIndex(build_prefix_index(rows[:n_base], ids[:n_base], vocab))
    ov.add(rows[n_base:], ids[n_base:])
    return rows, ids, vocab, ov, n_base


@pytest.mark.parametrize("seed", range(3))
def test_sequence_log_probs_is_a_distribution_over_items(seed):
    """Summed over every item of the index, P(item) = exp(sum of its token log-probs) is
    1: with one index, and with a base + overlay pair (whose items are the union)."""
    rows, ids, vocab, ov, n_base = overlay_split(seed + 80)
    step_fn = make_table_model(seed, rows.shape[1], vocab)
    logp = teacher_forced(step_fn, rows)
    tokens = torch.as_tensor(rows)
    merged, merged_ids = sequence_log_probs(logp, tokens, ov.merged().to_tensors())
    over, over_ids = sequence_log_probs(logp, tokens, ov.to_tensors())
    assert merged.shape == tokens.shape and merged.dtype == torch.float32
    assert merged_ids.tolist() == ids.tolist() == over_ids.tolist()
    assert torch.isfinite(merged).all() and (merged <= 0).all()
    for log_p in (merged, over):
        total = log_p.sum(dim=1).double().exp().sum()
        torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(over, merged, rtol=0, atol=1e-6)
    # The base index alone: its items sum to 1 (a different softmax), added ones are absent.
    base, base_ids = sequence_log_probs(logp, tokens, ov.base.to_tensors())
    assert base_ids[:n_base].tolist() == ids[:n_base].tolist()
    assert (base_ids[n_base:] == -1).all()
    total = base[:n_base].sum(dim=1).double().exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))
    assert (base[:n_base].sum(dim=1) >= merged[:n_base].sum(dim=1) - 1e-6).all()
    # Logits work as well as log-probs: any shift per (sequence, position) cancels.
    shift = torch.randn(logp.shape[:2], generator=torch.Generator().manual_seed(seed)) * 5
    shifted, _ = sequence_log_probs(logp + shift[..., None], tokens, ov.to_tensors())
    torch.testing.assert_close(shifted, over, rtol=0, atol=1e-5)


@pytest.mark.parametrize("with_overlay", [False, True])
def test_sequence_log_probs_match_the_beam_search_scores(with_overlay):
    rows, _, vocab, ov, _ = overlay_split(90)
    index = ov.to_tensors() if with_overlay else ov.merged().to_tensors()
    step_fn = make_table_model(7, rows.shape[1], vocab)
    items, scores, tokens = constrained_beam_search(step_fn, index, 2, 25, 25)
    assert (items >= 0).all()
    flat = tokens.reshape(-1, rows.shape[1])
    log_p, found = sequence_log_probs(teacher_forced(step_fn, flat), flat, index)
    assert found.tolist() == items.reshape(-1).tolist()
    torch.testing.assert_close(log_p.sum(dim=1), scores.reshape(-1), rtol=0, atol=1e-5)
    # The search with a beam as wide as the catalogue finds every item with its score.
    n = rows.shape[0]
    all_items, all_scores, _ = constrained_beam_search(step_fn, index, 1, n, n)
    log_p, found = sequence_log_probs(teacher_forced(step_fn, rows), torch.as_tensor(rows), index)
    by_id = dict(zip(found.tolist(), log_p.sum(dim=1).tolist(), strict=True))
    want = torch.tensor([by_id[i] for i in all_items[0].tolist()])
    torch.testing.assert_close(all_scores[0], want, rtol=0, atol=1e-5)


def test_sequence_log_probs_treat_nan_as_an_invalid_token():
    """A model that emits NaN for a token forbids it, as -inf does: the sibling's
    normaliser ignores it, and a sequence through it is -inf from there on."""
    rows, _, vocab, ov, _ = overlay_split(110)
    index = ov.to_tensors()
    logp = teacher_forced(make_table_model(9, rows.shape[1], vocab), rows)
    tokens = torch.as_tensor(rows)
    bad = torch.zeros_like(logp, dtype=torch.bool)
    bad[:, 1, rows[0, 1]] = True  # item 0's second token, for every sequence
    with_nan, _ = sequence_log_probs(logp.masked_fill(bad, float("nan")), tokens, index)
    with_inf, _ = sequence_log_probs(logp.masked_fill(bad, float("-inf")), tokens, index)
    assert not with_nan.isnan().any()
    torch.testing.assert_close(with_nan, with_inf, rtol=0, atol=0)
    assert torch.isneginf(with_nan[0, 1:]).all() and torch.isfinite(with_nan[0, 0])


def test_sequence_log_probs_of_sequences_outside_the_index():
    rows, ids, vocab, ov, _ = overlay_split(100)
    index = ov.to_tensors()
    step_fn = make_table_model(8, rows.shape[1], vocab)
    good = rows[:2]
    bad_third = good[0].copy()
    used = {tuple(r[:3]) for r in rows}
    children = {r[2] for r in rows if tuple(r[:2]) == tuple(good[0, :2])}
    bad_third[2] = next(t for t in range(3, vocab) if t not in children)  # leaves the tree
    assert tuple(bad_third[:3]) not in used
    bad_root = good[1].copy()
    bad_root[0] = 2  # EOS: never a first token
    out_of_vocab = good[0].copy()
    out_of_vocab[3] = vocab
    negative = good[1].copy()
    negative[1] = -1
    seqs = np.stack([good[0], bad_third, bad_root, out_of_vocab, negative, good[1]])
    logp = teacher_forced(step_fn, np.minimum(seqs, vocab - 1))
    log_p, found = sequence_log_probs(logp, torch.as_tensor(seqs), index)
    assert found.tolist() == [ids[0], -1, -1, -1, -1, ids[1]]
    assert torch.isfinite(log_p[[0, 5]]).all()
    # The valid prefix keeps its log-probs; from the first token off the tree on, -inf.
    torch.testing.assert_close(log_p[1, :2], log_p[0, :2])
    assert torch.isneginf(log_p[1, 2:]).all()
    assert torch.isneginf(log_p[2]).all()
    assert torch.isneginf(log_p[3, 3]) and torch.isneginf(log_p[4, 1:]).all()
    # A token the model forbids (-inf or NaN) makes the sequence no item too.
    for value in (float("-inf"), float("nan")):
        forbidding = logp.clone()
        forbidding[0, 1, int(seqs[0, 1])] = value
        log_p2, found2 = sequence_log_probs(forbidding, torch.as_tensor(seqs), index)
        assert found2[0] == -1 and torch.isneginf(log_p2[0, 1:]).all()
        assert torch.equal(log_p2[0, 0], log_p[0, 0]) and torch.equal(log_p2[5], log_p[5])


def test_sequence_log_probs_checks_shapes():
    rows, ids, vocab = random_catalog(110, n=30)
    index = build_prefix_index(rows, ids, vocab).to_tensors()
    tokens = torch.as_tensor(rows)
    with pytest.raises(ValueError, match="log_probs"):
        sequence_log_probs(torch.zeros(len(rows), 4, vocab + 1), tokens, index)
    with pytest.raises(ValueError, match="log_probs"):
        sequence_log_probs(torch.zeros(len(rows), 3, vocab), tokens[:, :3], index)
    with pytest.raises(ValueError, match="log_probs"):
        sequence_log_probs(torch.zeros(len(rows) + 1, 4, vocab), tokens, index)
    with pytest.raises(ValueError, match="index_tensors"):
        sequence_log_probs(torch.zeros(len(rows), 4, vocab), tokens, object())


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("seed", range(2))
def test_csr_and_padded_levels_decode_alike(monkeypatch, seed, padded):
    """Every level CSR or every level padded: the search, with an overlay, with excluded
    and allowed items, and teacher forcing match the reference."""
    monkeypatch.setattr("models.prefix_index.pad_level", lambda *_: padded)
    rows, ids, vocab = random_catalog(seed + 60, n=200)
    n_base = rows.shape[0] - 20
    ov = OverlayIndex(build_prefix_index(rows[:n_base], ids[:n_base], vocab))
    ov.add(rows[n_base:], ids[n_base:])
    base, over = ov.to_tensors()
    assert all(level.padded == padded for level in base.levels + over.levels)
    step_fn = make_table_model(seed, rows.shape[1], vocab)
    want = reference_beam_search(step_fn, rows, ids, 2, 15, 15)
    assert_matches_reference(
        constrained_beam_search(step_fn, (base, over), 2, 15, 15), want, rows, ids
    )
    exclude = torch.as_tensor(np.sort(ids[::7])[None].repeat(2, 0))
    allowed = torch.as_tensor(np.sort(ids[1::3])[None].repeat(2, 0))
    got = constrained_beam_search(step_fn, (base, over), 2, 15, 10, exclude, allowed=allowed)[0]
    kept = set(ids[1::3].tolist()) - set(ids[::7].tolist())
    assert set(got[got >= 0].tolist()) <= kept and (got >= 0).sum(dim=1).tolist() == [10, 10]
    logits = torch.randn(
        len(rows), rows.shape[1], vocab, generator=torch.Generator().manual_seed(seed)
    )
    _, found = sequence_log_probs(logits, torch.as_tensor(rows), (base, over))
    assert found.tolist() == ids.tolist()
