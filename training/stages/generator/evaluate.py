"""Stage D's evaluation: the served decoding (`models.decoding`), measured.

`ServedModel` is what serving holds: the generator, its item table (vectors, tokens,
prefix index) and the decoding config, including the dense weight w of the mixed score.
`evaluate_served` ranks every evaluation user's target with exactly the serving code
(beam search + dense candidates, rescored), for several w at once (the candidates do not
depend on w), and reports diagnostics: catalogue coverage, the tail share of the top 10,
requests that got fewer than k results. `evaluate_exact` ranks the WHOLE catalogue by the
same mixed score, without beam search: the gap between the two is what the search loses.
Exact scoring decodes every node of the prefix tree once per user and scores only each
node's children (`Generator.all_rows_log_probs`): on catalogues of thousands it is cheaper
than the beam search, which is why training validates with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from models.decoding import Catalogue, DecodingConfig, find_candidates, mix, top_k_of
from models.generator import Generator
from models.path_tables import PathTables
from training.data.preprocess import COLD, TAIL, EvalSet, Sequences
from training.device import autocast
from training.evaluate import (
    EvalResult,
    batch_within_budget,
    ranks_from_scores,
    ranks_from_topk,
    summarise,
)
from training.stats import per_user_ndcg

TOP_K = 10  # the metrics' largest cut-off
DENSE_ONLY = 1.0  # the dense weight w at which the served score is the dense head alone


@dataclass
class ServedModel:
    generator: Generator
    catalogue: Catalogue
    decoding: DecodingConfig
    paths: PathTables  # the catalogue's tokens for exact scoring (`evaluate_exact`)

    @property
    def max_len(self) -> int:
        return self.generator.config.max_len


@dataclass
class ServedEvaluation:
    """One evaluation of the served decoding at several dense weights."""

    results: dict[float, EvalResult]  # w -> metrics
    diagnostics: dict[float, dict]  # w -> coverage, tail share, short lists

    def best_weight(self) -> float:
        """The w with the highest NDCG@10 (ties: the smaller w, i.e. more generative)."""
        return max(sorted(self.results), key=lambda w: self.results[w].metrics["all"]["ndcg@10"])

    def schedule_weight(self) -> float:
        """The w whose validation NDCG@10 drives the schedule (learning-rate halving, early
        stopping, the epoch kept): the dense head alone when the grid has it. One fixed
        scorer, so which epoch is kept does not depend on which w happened to win it; the
        maximum over the grid is a noisier target than any one of its points."""
        return DENSE_ONLY if DENSE_ONLY in self.results else self.best_weight()

    def chosen_weight(self) -> float:
        """The w to ship: the best on NDCG@10, unless the dense head alone (w = 1, the
        simpler and cheaper scorer: no decoder pass) is within one standard error of it
        (the one-standard-error rule, on the per-user NDCG@10 difference of the same
        users). A raw maximum over the grid chases validation noise: in the first 5-seed
        run it picked mixes that lost to the dense head on test (BENCHMARKS.md)."""
        best = self.best_weight()
        if DENSE_ONLY not in self.results or best == DENSE_ONLY:
            return best
        diff = per_user_ndcg(self.results[best].ranks) - per_user_ndcg(
            self.results[DENSE_ONLY].ranks
        )
        standard_error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        return best if diff.mean() > standard_error else DENSE_ONLY


def padded_exclude(history: Sequences, device: torch.device) -> torch.Tensor:
    """(B, E) int64 every history item per user, -1 padding (E = longest history, >= 1)."""
    width = max(int(history.lengths.max(initial=0)), 1)
    out = np.full((history.n_users, width), -1, dtype=np.int64)
    cols = np.arange(len(history.items)) - np.repeat(history.offsets[:-1], history.lengths)
    out[history.row_ids(), cols] = history.items
    return torch.as_tensor(out, device=device)


def _diagnostics(top: np.ndarray, groups: np.ndarray, n_items: int) -> dict:
    """top: (U, k) recommended rows (-1 padding) of every evaluated user."""
    real = top[top > 0]
    return {
        "coverage": float(np.unique(real).size / max(n_items, 1)),  # distinct items / catalogue
        "distinct_items": int(np.unique(real).size),
        "tail_share_top10": float(np.isin(groups[real], (TAIL, COLD)).mean()) if real.size else 0.0,
        "cold_share_top10": float((groups[real] == COLD).mean()) if real.size else 0.0,
        "short_lists": float((top <= 0).any(axis=1).mean()),  # requests with < k results
    }


def evaluate_served(
    model: ServedModel,
    eval_set: EvalSet,
    item_groups: np.ndarray,
    weights: tuple[float, ...] | None = None,
    batch_size: int = 128,
    desc: str = "evaluate",
) -> ServedEvaluation:
    """Rank every user's target with the served decoding at each dense weight w (default:
    the model's own). History items are excluded (all of them, not just the last max_len)."""
    weights = (model.decoding.dense_weight,) if weights is None else tuple(weights)
    need_gen = min(weights) < 1.0
    device = model.catalogue.item_vectors.device
    n_users = len(eval_set.users)
    tops = {w: np.full((n_users, TOP_K), -1, dtype=np.int64) for w in weights}
    model.generator.eval()
    starts = range(0, n_users, batch_size)
    for start in tqdm(starts, total=len(starts), desc=desc, leave=False):
        idx = np.arange(start, min(start + batch_size, n_users))
        history = eval_set.history.select(idx)
        rows = torch.as_tensor(history.last(model.max_len), device=device)
        with torch.no_grad(), autocast(device):
            candidates = find_candidates(
                model.generator,
                rows,
                model.catalogue,
                model.decoding,
                padded_exclude(history, device),
                top_k=TOP_K,
                generative=need_gen,
            )
        for w in weights:
            top, _ = top_k_of(candidates, w, TOP_K)
            tops[w][idx] = top.cpu().numpy()
    results, diagnostics = {}, {}
    groups_of_targets = item_groups[eval_set.targets]
    n_items = model.catalogue.n_rows - 1
    for w, top in tops.items():
        ranks = ranks_from_topk(top, eval_set.targets, eval_set.history)
        results[w] = summarise(ranks, groups_of_targets)
        diagnostics[w] = _diagnostics(top, item_groups, n_items)
    return ServedEvaluation(results, diagnostics)


def evaluate_exact(
    model: ServedModel,
    eval_set: EvalSet,
    item_groups: np.ndarray,
    weights: tuple[float, ...] | None = None,
    batch_size: int = 64,
    desc: str = "exact",
) -> dict[float, EvalResult]:
    """Rank the WHOLE catalogue by the mixed score at each dense weight w (default: the
    model's own): no beam search, no candidate set. Both heads' scores of every item are
    computed once per batch and mixed for every w. Batches shrink on large catalogues:
    the generative scores run the decoder over every deepest prefix for every user, a
    (users, prefixes, L + 1, C) tensor."""
    weights = (model.decoding.dense_weight,) if weights is None else tuple(weights)
    need_gen = min(weights) < 1.0
    device = model.catalogue.item_vectors.device
    n_users = len(eval_set.users)
    vectors = model.catalogue.item_vectors
    per_user = vectors.shape[0]
    if need_gen:
        per_user += model.paths.prefixes[-1].shape[0] * model.paths.depth * vectors.shape[1]
    batch_size = batch_within_budget(batch_size, per_user)
    ranks = {w: np.empty(n_users, dtype=np.int64) for w in weights}
    starts = range(0, n_users, batch_size)
    for start in tqdm(starts, total=len(starts), desc=desc, leave=False):
        idx = np.arange(start, min(start + batch_size, n_users))
        history = eval_set.history.select(idx)
        rows = torch.as_tensor(history.last(model.max_len), device=device)
        with torch.no_grad(), autocast(device):
            vectors = model.catalogue.item_vectors
            state = model.generator.user_state(vectors[rows], rows != 0)
            dense = torch.log_softmax(state.float() @ vectors.float().T, dim=1)
            dense[:, 0] = float("-inf")
            gen = model.generator.all_rows_log_probs(state, model.paths) if need_gen else None
        targets = torch.as_tensor(eval_set.targets[idx], device=device)
        for w in weights:
            ranks[w][idx] = ranks_from_scores(mix(dense, gen, w), targets, history)
    groups = item_groups[eval_set.targets]
    return {w: summarise(r, groups) for w, r in ranks.items()}


def with_weight(model: ServedModel, dense_weight: float) -> ServedModel:
    return replace(model, decoding=replace(model.decoding, dense_weight=float(dense_weight)))
