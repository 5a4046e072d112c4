import math

import numpy as np
import pytest
import torch

from training.data.preprocess import COLD, HEAD, TAIL, EvalSet, Sequences
from training.evaluate import (
    EVAL_ELEMENT_BUDGET,
    MISS,
    batch_within_budget,
    evaluate_scores,
    evaluate_topk,
    metrics_from_ranks,
    ranks_from_scores,
    ranks_from_topk,
)


def seqs(rows):
    lengths = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else []
    return Sequences(offsets, np.asarray(items, dtype=np.int64))


def test_rank_counts_higher_scores_and_skips_history_and_padding():
    # items 1..5; item 5 scores highest but is in the history, padding 0 is never ranked
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.3, 0.9, 1.0]])
    ranks = ranks_from_scores(scores, torch.tensor([2]), seqs([[5]]))
    assert ranks.tolist() == [1]  # only item 4 (0.9) is ahead of item 2 (0.5)


def test_ties_are_broken_by_item_id():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert ranks_from_scores(scores, torch.tensor([3]), seqs([[]])).tolist() == [2]
    assert ranks_from_scores(scores, torch.tensor([1]), seqs([[]])).tolist() == [0]


def test_target_in_history_is_a_miss():
    scores = torch.tensor([[0.0, 1.0, 2.0]])
    assert ranks_from_scores(scores, torch.tensor([2]), seqs([[2]])).tolist() == [MISS]


def test_metrics_by_hand():
    ranks = np.array([0, 1, 4, 9, 10, MISS])
    m = metrics_from_ranks(ranks)
    assert m["recall@5"] == pytest.approx(3 / 6)
    assert m["recall@10"] == pytest.approx(4 / 6)
    ndcg5 = (1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6
    assert m["ndcg@5"] == pytest.approx(ndcg5)
    assert m["ndcg@10"] == pytest.approx(ndcg5 + 1 / math.log2(11) / 6)


def test_topk_lists_drop_history_before_ranking():
    topk = np.array([[7, 3, 9, 4], [1, 2, 3, 0], [5, 6, 0, 0]])
    history = seqs([[7], [], [5]])
    ranks = ranks_from_topk(topk, np.array([9, 3, 8]), history)
    assert ranks.tolist() == [1, 2, MISS]


def test_scores_and_topk_give_the_same_metrics():
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 40
    scores = torch.as_tensor(rng.normal(size=(n_users, n_items + 1)), dtype=torch.float32)
    history = seqs(
        [rng.choice(np.arange(1, n_items + 1), 3, replace=False) for _ in range(n_users)]
    )
    targets = rng.integers(1, n_items + 1, n_users)
    groups = rng.choice([HEAD, TAIL, COLD], n_items + 1).astype(np.int8)
    eval_set = EvalSet(users=np.arange(n_users), history=history, targets=targets)

    def score_fn(users, hist):
        return scores[users]

    def topk_fn(users, hist):
        s = scores[users].clone()
        s[:, 0] = -math.inf
        # the list includes history items; the evaluator must drop them
        return torch.topk(s, 20, dim=1).indices.numpy()

    by_scores = evaluate_scores(score_fn, eval_set, groups, batch_size=7)
    by_topk = evaluate_topk(topk_fn, eval_set, groups, batch_size=7)
    for group in ("all", "head", "tail", "cold"):
        for metric, value in by_scores.metrics[group].items():
            assert by_topk.metrics[group][metric] == pytest.approx(value)
    assert sum(by_scores.counts[g] for g in ("head", "tail", "cold")) == n_users


def test_empty_group_reports_nan():
    m = metrics_from_ranks(np.array([], dtype=np.int64))
    assert all(math.isnan(v) for v in m.values())


def test_batches_shrink_only_on_large_catalogues():
    assert batch_within_budget(256, 1683) == 256  # ML-100K: unchanged
    assert batch_within_budget(256, 100_001) == 256  # 100k items: 26M elements, within
    assert batch_within_budget(256, 10_000_001) == EVAL_ELEMENT_BUDGET // 10_000_001
    assert batch_within_budget(256, 10**12) == 1
