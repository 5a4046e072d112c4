"""The dense head's candidates from the approximate index (models/dense_index.py and the
index path of models/decoding.py): with every list probed it finds what the exact scan
finds; with few lists probed, exclusions, filters and added items every request still
gets k eligible rows (widening, then the exact scan); the new-item share and small
catalogues keep the exact scan."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models import decoding
from models.decoding import DecodingConfig, find_candidates, recommend_top_k
from models.dense_candidates import index_dense_candidates, index_log_probs
from models.dense_index import DenseIndexConfig, build_dense_index
from models.item_table import ItemTable
from models.prefix_index import build_prefix_index
from tests.bundle_factory import tiny_contents
from tests.models.test_decoding import fresh_tokens

N_ITEMS = 300
NLIST = 16


@pytest.fixture(scope="module")
def contents():
    return tiny_contents(n_items=N_ITEMS, budget=3, seed=5)


def make_table(contents, nprobe: int | None, grow: bool = False) -> ItemTable:
    """The bundle's rows with an index of NLIST lists probing `nprobe` (None: no index);
    with grow, 3 rows added at serving time, the second replaced by a fourth (rows N + 1,
    N + 3, N + 4 live; N + 2 retired)."""
    index = build_prefix_index(
        contents.item_tokens[1:], np.arange(1, N_ITEMS + 1), contents.layout.vocab_size
    )
    dense = None
    if nprobe is not None:
        # Flat lists: with every list probed they rank exactly, which the tests of the
        # decoding logic below rely on (the codecs have tests of their own above).
        config = DenseIndexConfig(
            mode="ann", nlist=NLIST, nprobe=nprobe, candidates=8, codec="flat"
        )
        dense = build_dense_index(contents.item_vectors, config)
    table = ItemTable(contents.item_vectors, contents.item_tokens, index, dense_index=dense)
    if grow:
        toks = fresh_tokens(contents, [1, 2, 3, 4])
        # Added vectors much larger than the bundle's: they top the dense ranking, so a
        # request must find them although they are in no index list.
        vectors = 10 * np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        table.add(vectors[:3], toks[:3])
        table.add(vectors[3:], toks[3:], retire=[N_ITEMS + 2])
    return table


def histories(batch: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.integers(1, N_ITEMS + 1, (batch, 6)), dtype=torch.int64)


def test_config_checks_and_the_automatic_choice():
    auto = DenseIndexConfig()
    assert not auto.wanted(199_999) and auto.wanted(200_000)
    assert not auto.wanted(1_000_000, "cuda")  # a GPU scans all rows in one matmul
    assert DenseIndexConfig(mode="ann").wanted(10)
    assert not DenseIndexConfig(mode="exact").wanted(10**7)
    assert auto.lists_for(1_000_000) == 2048 and auto.lists_for(100_000) == 512
    assert auto.lists_for(100) == 64 and auto.lists_for(10) == 10
    with pytest.raises(ValueError, match="mode"):
        DenseIndexConfig(mode="hnsw")
    with pytest.raises(ValueError, match="nprobe"):
        DenseIndexConfig(nprobe=0)


def test_exhaustive_probing_of_the_flat_codec_finds_the_exact_top_rows():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((501, 16)).astype(np.float32)
    index = build_dense_index(vectors, DenseIndexConfig(nlist=NLIST, nprobe=NLIST, codec="flat"))
    assert index.n_rows == 501 and index.nprobe == NLIST
    states = torch.as_tensor(rng.standard_normal((8, 16)).astype(np.float32))
    rows, scores = index.search(states, 50)
    logits = states @ torch.as_tensor(vectors[1:]).T
    want = logits.topk(50, dim=1)
    assert torch.equal(rows, want.indices + 1)  # rows 1..N, never the padding row
    torch.testing.assert_close(scores, want.values, rtol=1e-5, atol=1e-4)


def test_the_sq8_codec_keeps_the_exact_top_rows_in_a_quarter_of_the_memory():
    """One byte per dimension: scores are approximate, so the exact top 10 must be among
    its top 50 (the decoder rescores those exactly), at about a quarter of the bytes."""
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((2001, 32)).astype(np.float32)
    flat = build_dense_index(vectors, DenseIndexConfig(nlist=NLIST, nprobe=NLIST, codec="flat"))
    sq8 = build_dense_index(vectors, DenseIndexConfig(nlist=NLIST, nprobe=NLIST, codec="sq8"))
    states = torch.as_tensor(rng.standard_normal((16, 32)).astype(np.float32))
    want = (states @ torch.as_tensor(vectors[1:]).T).topk(10, dim=1).indices + 1
    rows, _ = sq8.search(states, 50)
    assert all(set(w.tolist()) <= set(r.tolist()) for w, r in zip(want, rows, strict=True))
    assert sq8.nbytes < 0.4 * flat.nbytes
    with pytest.raises(ValueError, match="codec"):
        DenseIndexConfig(codec="pq")


def test_the_pq_fast_scan_codec_hands_over_a_longer_list_that_holds_the_exact_top_rows():
    """Half a byte per dimension: coarser scores than SQ8, so the index asks for 512 rows
    by default, and the exact top 10 must be among its top 200 here (of 2,000)."""
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((2001, 32)).astype(np.float32)
    config = DenseIndexConfig(nlist=NLIST, nprobe=NLIST, codec="pq4fs")
    assert config.candidates_asked == 512 and DenseIndexConfig(codec="sq8").candidates_asked == 256
    assert DenseIndexConfig(codec="pq4fs", candidates=300).candidates_asked == 300
    pq = build_dense_index(vectors, config)
    sq8 = build_dense_index(vectors, replace(config, codec="sq8"))
    assert pq.candidates == 512
    states = torch.as_tensor(rng.standard_normal((16, 32)).astype(np.float32))
    want = (states @ torch.as_tensor(vectors[1:]).T).topk(10, dim=1).indices + 1
    rows, scores = pq.search(states, 200)
    assert all(set(w.tolist()) <= set(r.tolist()) for w, r in zip(want, rows, strict=True))
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first
    assert pq.nbytes < 0.75 * sq8.nbytes  # 16 bytes of codes + 8 of id against 32 + 8
    with pytest.raises(ValueError, match="even"):
        build_dense_index(vectors[:, :31].copy(), config)


@pytest.mark.parametrize("dense_weight", [0.5, 1.0])
def test_exhaustive_probing_ranks_as_the_exact_scan(contents, dense_weight):
    """Every list probed: the same top k as the exact scan, at any w (the normaliser is a
    per-request constant); the returned log P_dense is an upper bound of the exact one."""
    exact = make_table(contents, None, grow=True).catalogue()
    approx = replace(exact, dense_index=make_table(contents, NLIST).dense_index)
    history = histories(6)
    config = DecodingConfig(beam_width=4, dense_weight=dense_weight, dense_candidates=10)
    want = recommend_top_k(contents.generator, history, exact, 10, config, exclude=history)
    got = recommend_top_k(contents.generator, history, approx, 10, config, exclude=history)
    assert torch.equal(got[0], want[0])
    a = find_candidates(contents.generator, history, approx, config, history, 10)
    e = find_candidates(contents.generator, history, exact, config, history, 10)
    assert torch.equal(a.rows, e.rows) and torch.equal(a.eligible, e.eligible)
    finite = torch.isfinite(e.dense)
    assert torch.equal(finite, torch.isfinite(a.dense))
    assert (a.dense[finite] >= e.dense[finite] - 1e-5).all()
    # One constant per request: the gap is the same for every candidate of a request.
    gap = torch.where(finite, a.dense - e.dense, 0.0)
    for b in range(len(history)):
        row = gap[b][finite[b]]
        torch.testing.assert_close(row, row[:1].expand_as(row))


@pytest.mark.parametrize("dense_weight", [0.0, 0.5, 1.0])
def test_few_lists_probed_still_give_k_eligible_rows(contents, dense_weight):
    """One list of 16 probed, few rows asked of the index, and requests whose exclusions
    and filters leave few eligible rows: each gets k eligible rows whenever k exist
    (the widened ask, then the exact scan), added rows included."""
    table = make_table(contents, nprobe=1, grow=True)
    cat = table.catalogue()
    k, batch = 5, 5
    live = torch.nonzero(cat.live).squeeze(1).numpy()
    rng = np.random.default_rng(3)
    allowed = torch.zeros(batch, cat.n_rows, dtype=torch.bool)
    for b, size in enumerate([3, k, len(live) - 2, 9, len(live)]):
        allowed[b, torch.as_tensor(rng.permutation(live)[:size])] = True
    allowed[:, N_ITEMS + 2] = True  # a retired row: allowed, never returned
    history = histories(batch, seed=4)
    exclude = torch.full((batch, 200), -1, dtype=torch.int64)
    exclude[3, :6] = torch.nonzero(allowed[3]).squeeze(1)[:6]  # leaves 3 of its 9 rows
    exclude[4] = torch.as_tensor(rng.permutation(live)[:200])  # most of the catalogue
    config = DecodingConfig(beam_width=2, dense_weight=dense_weight, dense_candidates=1)
    rows, scores = recommend_top_k(
        contents.generator, history, cat, k, config, exclude=exclude, allowed=allowed
    )
    for b in range(batch):
        eligible = set(torch.nonzero(allowed[b] & cat.live).squeeze(1).tolist())
        eligible -= set(exclude[b].tolist())
        got = [r for r in rows[b].tolist() if r > 0]
        assert set(got) <= eligible and len(set(got)) == len(got)
        assert len(got) == min(k, len(eligible))
        assert torch.isfinite(scores[b, : len(got)]).all()


def test_the_index_path_normalises_over_the_pool_and_the_other_candidates_once(contents):
    """log P_dense on the index path = exact logit - log-sum-exp over the live rows of the
    pool and the candidates together, each row once (candidates outside the pool, repeats,
    padding included), although the pool's logits are not recomputed. (No added rows:
    their large vectors would swamp the normaliser, and the repeats with it.)"""
    cat = make_table(contents, nprobe=2).catalogue()
    history = histories(3, seed=7)
    state = contents.generator.user_state(cat.item_vectors[history], history != 0)
    found = index_dense_candidates(state, cat, history, None, 5)
    assert not found.exact.any()
    with torch.no_grad():
        logits = state @ cat.item_vectors.T
    # The best live rows the index left out: they weigh in the normaliser, and counted
    # twice (the repeats) they would move it.
    outside = logits.clone()
    outside[:, 0] = float("-inf")
    outside.scatter_(1, found.pool.clamp(min=0), float("-inf"))
    others = outside.topk(6, dim=1).indices
    rows = torch.cat([found.rows, others, others[:, :2], found.pool[:, :2]], dim=1)
    rows[0, -1] = -1  # padding
    got = index_log_probs(state, cat, rows, found)
    for b in range(3):
        union = set(found.pool[b].tolist()) | set(rows[b].tolist())
        union = [r for r in union if r > 0]
        assert set(rows[b].tolist()) - set(found.pool[b].tolist())  # some rows are fresh
        log_z = torch.logsumexp(logits[b, union], dim=0)
        for j, r in enumerate(rows[b].tolist()):
            if r > 0:
                torch.testing.assert_close(got[b, j], logits[b, r] - log_z)
            else:
                assert torch.isneginf(got[b, j])


def test_added_rows_are_candidates_without_being_indexed(contents):
    """The added rows' large vectors top the dense ranking: found by the exact scan of
    the added rows, whatever the index probes; the retired one never."""
    cat = make_table(contents, nprobe=1, grow=True).catalogue()
    history = histories(4, seed=5)
    config = DecodingConfig(dense_weight=1.0, dense_candidates=10)
    exact = replace(cat, dense_index=None)
    want = recommend_top_k(contents.generator, history, exact, 10, config, exclude=history)[0]
    got = recommend_top_k(contents.generator, history, cat, 10, config, exclude=history)[0]
    added = {N_ITEMS + 1, N_ITEMS + 3, N_ITEMS + 4}
    for b in range(4):
        assert added & set(want[b].tolist()) <= set(got[b].tolist())
        assert N_ITEMS + 2 not in got[b].tolist()


def test_a_request_the_index_cannot_serve_is_scanned_exactly(contents, monkeypatch):
    """An allowlist of rows the probed list does not hold, too long to score directly
    (more than the rows asked of the index): the request falls back to the exact scan,
    and then its candidates and log P_dense are the exact ones."""
    table = make_table(contents, nprobe=1)
    cat = table.catalogue()
    history = histories(2, seed=6)
    state = contents.generator.user_state(cat.item_vectors[history], history != 0)
    probed, _ = cat.dense_index.search(state, N_ITEMS)
    allowed = torch.zeros(2, cat.n_rows, dtype=torch.bool)
    outside = sorted(set(range(1, N_ITEMS + 1)) - set(probed[0].tolist()))[:40]
    allowed[0, outside] = True
    allowed[1] = True
    allowed[1, 0] = False
    found = decoding.index_dense_candidates(state, cat, None, allowed, 3)
    assert found.exact.tolist() == [True, False]
    config = DecodingConfig(dense_weight=1.0, dense_candidates=3)
    exact = replace(cat, dense_index=None)
    want = recommend_top_k(contents.generator, history, exact, 3, config, allowed=allowed)
    got = recommend_top_k(contents.generator, history, cat, 3, config, allowed=allowed)
    assert torch.equal(got[0][0], want[0][0])
    torch.testing.assert_close(got[1][0], want[1][0])


def test_without_the_generative_head_the_index_rows_are_served_as_found(contents):
    """w = 1 returns the index's candidates as `index_dense_candidates` scored them,
    without the general path's dedupe, blocking and rescoring: the same rows, eligibility
    and log P_dense as that path computes, for indexed and exactly scanned requests alike
    (request 0 allows 40 rows outside the probed list, 38 of them withdrawn, so it is
    scanned exactly and one of its three slots holds a blocked row; request 1 excludes
    its history)."""
    table = make_table(contents, nprobe=1, grow=True)
    cat = table.catalogue()
    history = histories(2, seed=6)
    state = contents.generator.user_state(cat.item_vectors[history], history != 0)
    probed, _ = cat.dense_index.search(state, N_ITEMS)
    allowed = torch.ones(2, cat.n_rows, dtype=torch.bool)
    allowed[0] = False
    outside = sorted(set(range(1, N_ITEMS + 1)) - set(probed[0].tolist()))[:40]
    allowed[0, outside] = True
    table.set_withdrawn(np.asarray(outside[2:]), True)
    cat = table.catalogue()
    exclude = torch.full((2, 6), -1, dtype=torch.int64)
    exclude[1] = history[1]
    config = DecodingConfig(dense_weight=1.0, dense_candidates=3)
    got = find_candidates(contents.generator, history, cat, config, exclude, 3, allowed=allowed)
    found = index_dense_candidates(state, cat, exclude, allowed, 3)
    assert found.exact.tolist() == [True, False]
    assert torch.equal(got.rows, found.rows) and got.generative is None
    want_eligible = ~decoding.blocked_at(found.rows, cat, exclude, allowed)
    assert torch.equal(got.eligible, want_eligible) and want_eligible.sum(dim=1).tolist() == [2, 3]
    want = index_log_probs(state, cat, found.rows, found)
    torch.testing.assert_close(got.dense[want_eligible], want[want_eligible])
    assert torch.isneginf(got.dense[~want_eligible]).all()


def test_a_short_allowlist_is_scored_row_by_row_without_the_index(contents):
    """An allowlist no longer than the rows asked of the index: its rows (and the added
    ones) are the pool, scored exactly, never the full scan; the ranking is the exact
    scan's, and log P_dense is normalised over the pool."""
    cat = make_table(contents, nprobe=1, grow=True).catalogue()
    history = histories(2, seed=8)
    state = contents.generator.user_state(cat.item_vectors[history], history != 0)
    allowed = torch.zeros(2, cat.n_rows, dtype=torch.bool)
    allowed[0, [5, 17, 40, 41, 200, 299]] = True  # 6 rows, fewer than the 12 asked
    allowed[1] = True
    allowed[1, 0] = False
    allowed[0, N_ITEMS + 1] = True  # an added row: a candidate either way
    found = index_dense_candidates(state, cat, None, allowed, 3)
    assert not found.exact.any()
    pool = set(found.pool[0].tolist()) - {-1}
    assert pool == {5, 17, 40, 41, 200, 299, *range(N_ITEMS + 1, N_ITEMS + 5)}  # all added
    config = DecodingConfig(dense_weight=1.0, dense_candidates=3)
    exact = replace(cat, dense_index=None)
    want = recommend_top_k(contents.generator, history[:1], exact, 3, config, allowed=allowed[:1])
    got = recommend_top_k(contents.generator, history[:1], cat, 3, config, allowed=allowed[:1])
    assert torch.equal(got[0], want[0])
    with torch.no_grad():
        logits = state[0] @ cat.item_vectors.T
    live = [r for r in pool if bool(cat.live[r])]
    rows = [r for r in got[0][0].tolist()]
    torch.testing.assert_close(got[1][0], logits[rows] - torch.logsumexp(logits[live], dim=0))


@pytest.mark.parametrize("dense_weight", [0.0, 0.5, 1.0])
def test_allowlist_row_lists_rank_as_their_mask_on_the_index_path(contents, dense_weight):
    """Short allowlists as (B, P) row lists (what the service sends): the pool is their
    rows and the added ones, exactly as for the mask of the same sets, so the rows and
    scores are the mask's; a retired row and excluded rows listed are never returned."""
    cat = make_table(contents, nprobe=1, grow=True).catalogue()
    history = histories(4, seed=9)
    lists = torch.full((4, 8), -1, dtype=torch.int64)
    lists[0, :3] = torch.tensor([5, 17, 40])
    lists[1, :6] = torch.tensor([299, 41, 200, N_ITEMS + 1, N_ITEMS + 2, 7])
    lists[2, :8] = torch.tensor([11, 12, 13, 14, 15, 16, 18, 19])
    exclude = torch.full((4, 2), -1, dtype=torch.int64)
    exclude[2] = torch.tensor([12, 13])
    mask = torch.zeros(4, cat.n_rows, dtype=torch.bool)
    mask.scatter_(1, lists.clamp(min=0), lists >= 0)
    mask[:, 0] = False
    config = DecodingConfig(beam_width=3, dense_weight=dense_weight, dense_candidates=3)
    args = (contents.generator, history, cat, 4, config)
    got = recommend_top_k(*args, exclude=exclude, allowed=lists)
    want = recommend_top_k(*args, exclude=exclude, allowed=mask)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert N_ITEMS + 2 not in got[0].tolist() and not ({12, 13} & set(got[0][2].tolist()))
    assert (got[0][3] == -1).all() and (got[0][0] > 0).sum() == 3


def test_a_broad_filter_scores_only_the_allowed_rows_the_index_found(contents):
    """A filter allowing too many rows to score directly (a category) asks the index for
    more rows; only the allowed ones among them are scored and normalise log P_dense
    (plus every added row, allowed or not, as for any request), and the ranking is the
    exact scan's when every list is probed."""
    cat = make_table(contents, nprobe=NLIST, grow=True).catalogue()
    history = histories(2, seed=10)
    state = contents.generator.user_state(cat.item_vectors[history], history != 0)
    allowed = torch.zeros(2, cat.n_rows, dtype=torch.bool)
    allowed[0, 1:N_ITEMS:3] = True  # a third of the bundle
    allowed[1, 1:] = True
    found = index_dense_candidates(state, cat, history, allowed, 3)
    assert not found.exact.any()
    added = set(range(N_ITEMS + 1, N_ITEMS + 5))
    pool = set(found.pool[0].tolist()) - {-1}
    assert pool - added and all(r in added or bool(allowed[0, r]) for r in pool)
    assert len(set(found.pool[1].tolist()) - {-1} - added) > len(pool - added)
    with torch.no_grad():
        logits = state[0] @ cat.item_vectors.T
    live = [r for r in pool if bool(cat.live[r])]
    rows = [r for r in found.rows[0].tolist() if r > 0]
    torch.testing.assert_close(
        found.log_probs[0, : len(rows)], logits[rows] - torch.logsumexp(logits[live], dim=0)
    )
    config = DecodingConfig(dense_weight=1.0, dense_candidates=3)
    exact = replace(cat, dense_index=None)
    want = recommend_top_k(
        contents.generator, history, exact, 3, config, exclude=history, allowed=allowed
    )
    got = recommend_top_k(
        contents.generator, history, cat, 3, config, exclude=history, allowed=allowed
    )
    assert torch.equal(got[0], want[0])


def test_the_new_item_share_keeps_the_exact_scan(contents):
    cat = make_table(contents, nprobe=1, grow=True).catalogue()
    exact = replace(cat, dense_index=None)
    history = histories(4, seed=7)
    config = DecodingConfig(beam_width=4, dense_weight=0.5, new_item_share=0.3)
    want = recommend_top_k(contents.generator, history, exact, 8, config, exclude=history)
    got = recommend_top_k(contents.generator, history, cat, 8, config, exclude=history)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_an_index_of_another_size_is_refused(contents):
    index = build_prefix_index(
        contents.item_tokens[1:], np.arange(1, N_ITEMS + 1), contents.layout.vocab_size
    )
    other = build_dense_index(contents.item_vectors[:-1], DenseIndexConfig(nlist=4))
    with pytest.raises(ValueError, match="dense index covers"):
        ItemTable(contents.item_vectors, contents.item_tokens, index, dense_index=other)
