"""Full-ranking evaluation: Recall@K and NDCG@K, overall and by the target's group.

Every model is measured the same way (METHOD.md, "Evaluation protocol"): each test user
has one target; the whole catalog is ranked; items already in the user's history are
excluded for every model alike (so a repeat purchase of a history item counts as a
miss); with one target, Recall@K equals HR@K and NDCG@K = 1 / log2(rank + 2).

Two entry points, one result: a score matrix over the catalog (ID models), or per-user
ranked top-K lists (generative models decoding with beam search). Both reduce to the
0-based rank of the target among the non-excluded items; ranks at or beyond the list
length are misses. Everything is vectorised over users.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data.preprocess import GROUPS, EvalSet, Sequences

KS = (5, 10)
METRICS = tuple(f"{name}@{k}" for k in KS for name in ("recall", "ndcg"))
MISS = np.iinfo(np.int64).max  # rank of a target that is not ranked at all
# New-item shares (`DecodingConfig.new_item_share`) the benchmark reports as extra rows
# ("share-0.1", ...) of the models that can score items without an id, when some test
# targets are such items (the cold-holdout protocol): the exposure knob's trade-off.
NEW_ITEM_SHARES = (0.1, 0.2, 0.3)
# The most elements a batch's largest matrix may hold (1 GiB of float32): batches shrink
# on large catalogues so evaluation memory stays flat as the catalogue grows. Every
# configuration measured so far (up to the 10k synthetic catalogue's exact generative
# scores, 64 x 2.6M) keeps its full batch, so no figure moves.
EVAL_ELEMENT_BUDGET = 2**28


def batch_within_budget(batch_size: int, per_user: int) -> int:
    """Users per batch when each user's rows take `per_user` elements: batch_size, or
    fewer (at least 1) so batch x per_user stays within EVAL_ELEMENT_BUDGET."""
    return max(1, min(batch_size, EVAL_ELEMENT_BUDGET // max(1, per_user)))


def share_row(share: float) -> str:
    return f"share-{share:g}"


def history_mask_indices(history: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items) index pairs of every history entry, for masking a (B, N + 1) matrix."""
    return history.row_ids(), history.items


def ranks_from_scores(
    scores: torch.Tensor, targets: torch.Tensor, history: Sequences
) -> np.ndarray:
    """0-based rank of each target in its row of `scores`, history items excluded.

    scores: (B, N + 1) float, column 0 is padding and never ranked.
    targets: (B,) int64 internal item ids.
    history: B sequences whose items are excluded from ranking.
    Ties are broken by item id (lower id first), which is deterministic and model-neutral.
    Returns (B,) int64; MISS for targets that are themselves excluded.
    """
    scores = scores.float().clone()
    scores[:, 0] = -math.inf
    rows, items = history_mask_indices(history)
    scores[torch.as_tensor(rows), torch.as_tensor(items)] = -math.inf
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    ids = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > target_scores) | (
        (scores == target_scores) & (ids[None, :] < targets[:, None])
    )
    ranks = ahead.sum(dim=1).cpu().numpy().astype(np.int64)
    ranks[np.isneginf(target_scores[:, 0].cpu().numpy())] = MISS
    return ranks


def ranks_from_topk(topk: np.ndarray, targets: np.ndarray, history: Sequences) -> np.ndarray:
    """0-based rank of each target within ranked lists, history items excluded.

    topk: (B, K') int item ids, best first; 0 or negative entries are padding.
    targets: (B,) int internal item ids.
    history: B sequences whose items are dropped from the lists before ranking (so a
        producer should return some extra items, e.g. beam width >= K + margin).
    Returns (B,) int64; MISS where the target is not in the (filtered) list.
    """
    topk = np.asarray(topk, dtype=np.int64)
    batch = topk.shape[0]
    excluded = topk <= 0
    if len(history.items):
        # Membership test without a per-user loop: encode (row, item) pairs as one key.
        stride = int(max(topk.max(initial=0), history.items.max(initial=0))) + 1
        hist_keys = history.row_ids() * stride + history.items
        list_keys = np.arange(batch)[:, None] * stride + np.maximum(topk, 0)
        excluded |= np.isin(list_keys, hist_keys)
    kept_before = np.cumsum(~excluded, axis=1) - (~excluded)  # kept items ahead of each slot
    is_target = (topk == np.asarray(targets)[:, None]) & ~excluded
    found = is_target.any(axis=1)
    ranks = np.full(batch, MISS, dtype=np.int64)
    ranks[found] = kept_before[found, is_target[found].argmax(axis=1)]
    return ranks


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over the given ranks (NaN when there are none)."""
    if len(ranks) == 0:
        return {m: float("nan") for m in METRICS}
    out = {}
    gain = np.zeros(len(ranks))
    hit_any = ranks != MISS
    gain[hit_any] = 1.0 / np.log2(ranks[hit_any].astype(np.float64) + 2.0)
    for k in KS:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
    return {m: out[m] for m in METRICS}


@dataclass(frozen=True)
class EvalResult:
    """Per-user ranks and their metrics by group."""

    ranks: np.ndarray  # (U,) 0-based rank of each user's target, MISS if not ranked
    target_groups: np.ndarray  # (U,) index into GROUPS
    metrics: dict[str, dict[str, float]]  # {"all"|group: {metric: value}}
    counts: dict[str, int]  # users per group


def summarise(ranks: np.ndarray, target_groups: np.ndarray) -> EvalResult:
    metrics = {"all": metrics_from_ranks(ranks)}
    counts = {"all": len(ranks)}
    for index, group in enumerate(GROUPS):
        in_group = target_groups == index
        metrics[group] = metrics_from_ranks(ranks[in_group])
        counts[group] = int(in_group.sum())
    return EvalResult(ranks=ranks, target_groups=target_groups, metrics=metrics, counts=counts)


def subsample(eval_set: EvalSet, n: int | None, seed: int) -> EvalSet:
    """A fixed random subset of n users (sorted), or eval_set itself when n is None or
    not smaller: per-epoch validation on large datasets."""
    if n is None or n >= len(eval_set.users):
        return eval_set
    idx = np.sort(np.random.default_rng(seed).choice(len(eval_set.users), n, replace=False))
    return EvalSet(eval_set.users[idx], eval_set.history.select(idx), eval_set.targets[idx])


ScoreFn = Callable[[np.ndarray, Sequences], torch.Tensor]
"""(users (B,), histories of those users) -> scores (B, N + 1)."""

TopKFn = Callable[[np.ndarray, Sequences], np.ndarray]
"""(users (B,), histories of those users) -> ranked item ids (B, K')."""


RankBatchFn = Callable[[np.ndarray, Sequences, np.ndarray], np.ndarray]
"""(users (B,), their histories, their targets (B,)) -> ranks (B,)."""


def _evaluate(
    rank_batch: RankBatchFn, eval_set: EvalSet, item_groups: np.ndarray, batch_size: int, desc: str
) -> EvalResult:
    """Rank every user's target batch by batch and summarise by the target's group."""
    n_users = len(eval_set.users)
    ranks = np.empty(n_users, dtype=np.int64)
    starts = range(0, n_users, batch_size)
    for start in tqdm(starts, total=len(starts), desc=desc, leave=False):
        idx = np.arange(start, min(start + batch_size, n_users))
        history = eval_set.history.select(idx)
        ranks[idx] = rank_batch(eval_set.users[idx], history, eval_set.targets[idx])
    return summarise(ranks, item_groups[eval_set.targets])


def evaluate_scores(
    score_fn: ScoreFn,
    eval_set: EvalSet,
    item_groups: np.ndarray,
    batch_size: int = 256,
    desc: str = "evaluate",
) -> EvalResult:
    """Rank the full catalog with `score_fn` for every user of `eval_set`, in batches of
    at most batch_size users, fewer on large catalogs (`batch_within_budget`): never a
    (users x items) matrix."""

    def rank_batch(users: np.ndarray, history: Sequences, targets: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            scores = score_fn(users, history)
        return ranks_from_scores(scores, torch.as_tensor(targets, device=scores.device), history)

    batch_size = batch_within_budget(batch_size, len(item_groups))
    return _evaluate(rank_batch, eval_set, item_groups, batch_size, desc)


def evaluate_topk(
    topk_fn: TopKFn,
    eval_set: EvalSet,
    item_groups: np.ndarray,
    batch_size: int = 256,
    desc: str = "evaluate",
) -> EvalResult:
    """Like evaluate_scores, for models that return ranked lists instead of scores."""

    def rank_batch(users: np.ndarray, history: Sequences, targets: np.ndarray) -> np.ndarray:
        return ranks_from_topk(topk_fn(users, history), targets, history)

    return _evaluate(rank_batch, eval_set, item_groups, batch_size, desc)
