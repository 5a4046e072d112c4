"""The dense head's candidates from an approximate index (`models.dense_index`), for
catalogues too large to score every row per request (docs/method.md, decoding): the
index's top rows plus every row added at serving time, blocked rows dropped, exact
logits for what is kept; a request the index leaves short is widened, then scanned
exactly, so it still gets k results whenever k eligible rows exist."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from models.row_sets import (
    NEG_INF,
    allowed_at,
    blocked_rows,
    dedupe,
    is_row_list,
    listed_mask,
    rows_of,
)
from models.take import take_rows

if TYPE_CHECKING:
    from models.decoding import Catalogue


def _row_logits(state: torch.Tensor, vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, C) states, (R, C) item vectors, (B, M) rows (-1 allowed) -> (B, M) state . v_row,
    exactly, for the listed rows only (-1 slots read row 0)."""
    picked = take_rows(vectors, rows.clamp(min=0)).float()  # (B, M, C)
    return torch.einsum("bc,bmc->bm", state.float(), picked)


def _live_at(rows: torch.Tensor, catalogue: Catalogue) -> torch.Tensor:
    """(B, M) rows (-1 allowed) -> (B, M) bool: a real row that is live (in the
    normaliser), whether or not a request may be shown it."""
    live = rows > 0
    if catalogue.live is not None:
        live &= take_rows(catalogue.live, rows.clamp(min=0))
    return live


def blocked_at(
    rows: torch.Tensor,
    catalogue: Catalogue,
    exclude: torch.Tensor | None,
    allowed: torch.Tensor | None,
    live: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, M) rows (-1 allowed) -> (B, M) bool: `blocked_rows` read at those rows only
    (empty slots and padding blocked), without building the (B, R) mask. live: the
    rows' `_live_at`, when the caller has it already."""
    bad = ~(_live_at(rows, catalogue) if live is None else live)
    bad |= listed_mask(exclude, rows)
    if allowed is not None:
        bad |= ~allowed_at(allowed, rows)
    return bad


def _pad_rows(
    parts: list[tuple[torch.Tensor, torch.Tensor]], batch: int, fill: float = -1
) -> torch.Tensor:
    """[(request indices (b,), values (b, M_i))] -> (batch, max M_i) of the values' dtype
    (row ids or logits), `fill` padding."""
    width = max(p.shape[1] for _, p in parts)
    first = parts[0][1]
    if len(parts) == 1 and first.shape[0] == batch:  # every request, in order: as is
        return first
    out = torch.full((batch, width), fill, dtype=first.dtype, device=first.device)
    for which, part in parts:
        out[which, : part.shape[1]] = part
    return out


def _allowed_only(pool: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, P) rows (-1 allowed), (B, R) bool mask -> (B, P') the allowed rows of each
    request, in pool order, -1 padding (P' the largest count, at least 1)."""
    at = rows_of(allowed.gather(1, pool.clamp(min=0)) & (pool > 0))  # pool positions
    return torch.where(at >= 0, pool.gather(1, at.clamp(min=0)), -1)


# Bundle rows read per request to estimate a filter's allowed share (a strided sample).
ALLOWED_SAMPLE = 16_384


@dataclass(frozen=True)
class DenseFound:
    """The dense candidates the index path found for B requests.

    rows: (B, n) int64 the best eligible rows, -1 padding.
    pool: (B, P) int64 every row whose logit was computed (the normaliser's rows), -1 pad.
    pool_log_z: (B,) float log-sum-exp of the live pool rows' exact logits, kept so the
        scorer does not gather the pool's vectors again (-inf for exact requests).
    exact: (B,) bool the requests scanned exactly (the index found too few).
    exact_log_z: (B,) float the exact log Z of those requests (0 elsewhere).
    log_probs: (B, n) float log P_dense of `rows` as `index_log_probs` gives it for them
        (they are all in the pool), -inf where a slot is empty or blocked.
    eligible: (B, n) bool a slot holding a row the request may be shown.
    """

    rows: torch.Tensor
    pool: torch.Tensor
    pool_log_z: torch.Tensor
    exact: torch.Tensor
    exact_log_z: torch.Tensor
    log_probs: torch.Tensor
    eligible: torch.Tensor


def index_dense_candidates(
    state: torch.Tensor,
    catalogue: Catalogue,
    exclude: torch.Tensor | None,
    allowed: torch.Tensor | None,
    n_dense: int,
) -> DenseFound:
    """The dense candidates from `catalogue.dense_index` (module docstring): the index's
    top M bundle rows plus every added row, blocked rows dropped, the best n_dense by
    exact logits. Requests with fewer than n_dense eligible rows ask again for widen x M
    rows; still short, they are scanned exactly (a full scan for those requests only, so
    k results whenever k eligible rows exist).

    A filter (`allowed`, either form: `models.row_sets`) changes the ask. Row lists (a
    short allowlist), and masks allowing at most M bundle rows, are scored exactly,
    those rows and the added ones, without the index: the index would return few of
    them, and the request would end in the full scan. Broader
    filters ask the index for M / s rows (s the smallest allowed share in the batch, at
    most widen x M), so the first ask usually leaves n_dense eligible rows."""
    index = catalogue.dense_index
    assert index is not None
    batch, device = state.shape[0], state.device
    vectors = catalogue.item_vectors
    # Added rows (above the indexed ones) are always candidates: few, and never indexed.
    added = torch.arange(index.n_rows, catalogue.n_rows, device=device)
    n_ex = 0 if exclude is None else exclude.shape[1]
    # Excluded rows (the history) are often among the best by the dense head: ask for
    # enough rows that they can all be dropped and n_dense still remain.
    m = max(index.candidates, 4 * n_dense) + n_ex
    todo = torch.arange(batch, device=device)
    found: list[tuple[torch.Tensor, torch.Tensor]] = []
    pools: list[tuple[torch.Tensor, torch.Tensor]] = []
    found_logits: list[tuple[torch.Tensor, torch.Tensor]] = []  # -inf: empty or blocked
    pool_log_z = torch.full((batch,), NEG_INF, dtype=torch.float32, device=device)

    def score_pool(which: torch.Tensor, pool: torch.Tensor, final: bool) -> torch.Tensor:
        """Exact logits of the (b, P) pool rows of requests `which`; the best n_dense
        eligible rows of each request that has that many (every request if `final`) are
        recorded. -> (b,) bool the requests recorded."""
        # Every request: the batch's tensors as they are (for a lone request, picking
        # its rows again cost as much as its logits).
        whole = len(which) == batch
        sub_state = state if whole else state[which]
        sub_ex = exclude if whole or exclude is None else exclude[which]
        sub_allowed = allowed if whole or allowed is None else allowed[which]
        if len(added):
            pool = torch.cat([pool, added[None].expand(len(which), -1)], dim=1)
        logits = _row_logits(sub_state, vectors, pool)
        live = _live_at(pool, catalogue)
        bad = blocked_at(pool, catalogue, sub_ex, sub_allowed, live=live)
        best = logits.masked_fill(bad, NEG_INF).topk(min(n_dense, pool.shape[1]), dim=1)
        rows = torch.where(best.values > NEG_INF, pool.gather(1, best.indices), -1)
        done = (rows > 0).sum(dim=1) >= n_dense
        if final:
            done = torch.ones_like(done)
        keep = slice(None) if bool(done.all()) else done  # a view, not a copy
        found.append((which[keep], rows[keep]))
        pools.append((which[keep], pool[keep]))
        found_logits.append((which[keep], best.values[keep]))
        pool_log_z[which[keep]] = torch.logsumexp(
            logits[keep].masked_fill(~live[keep], NEG_INF), dim=1
        )
        return done

    if is_row_list(allowed):  # short allowlists: their rows are the pool, no index
        listed = allowed.masked_fill(allowed >= index.n_rows, -1)  # added rows: see above
        score_pool(todo, listed, final=True)
        todo = todo[:0]
    elif allowed is not None:
        # Each request's allowed share, from every stride-th bundle row: counting the
        # whole (B, R) mask cost 55-115 ms per batch of 32 at 1M rows. A wrong guess
        # costs time only; either way every allowed row can still be found.
        stride = max(1, index.n_rows // ALLOWED_SAMPLE)
        seen = allowed[:, 1 : index.n_rows : stride]
        share = seen.sum(dim=1).clamp(min=1) / max(seen.shape[1], 1)
        few = share * (index.n_rows - 1) <= m
        if bool(few.any()):
            score_pool(todo[few], rows_of(allowed[few, : index.n_rows]), final=True)
            todo, share = todo[~few], share[~few]
        if len(todo):
            m = min(math.ceil(m / float(share.min())), m * index.widen)
    for _ in range(2):  # the first ask, then one widened
        if not len(todo):
            break
        ann_rows, _ = index.search(state if len(todo) == batch else state[todo], m)
        if allowed is not None:
            # A filter asked for M / s rows: only its allowed ones are scored (at 1M
            # items a category filter's batch spent 40% of its time gathering the
            # vectors of rows it could not return). The pool, and so the normaliser,
            # is then the allowed rows found plus the added ones, as for an allowlist.
            ann_rows = _allowed_only(ann_rows, allowed if len(todo) == batch else allowed[todo])
        todo = todo[~score_pool(todo, ann_rows, final=False)]
        if m >= index.index.ntotal:
            break
        m *= index.widen
    exact = torch.zeros(batch, dtype=torch.bool, device=device)
    exact_log_z = torch.zeros(batch, dtype=torch.float32, device=device)
    if len(todo):  # the index's rows could not give them n_dense: the exact scan
        sub_ex = None if exclude is None else exclude[todo]
        sub_allowed = None if allowed is None else allowed[todo]
        logits = state[todo].float() @ vectors.float().T
        blocked = blocked_rows(len(todo), catalogue, sub_ex, device, sub_allowed)
        best = logits.masked_fill(blocked, NEG_INF).topk(n_dense, dim=1)
        rows = best.indices
        dead = torch.zeros(catalogue.n_rows, dtype=torch.bool, device=device)
        dead[0] = True
        if catalogue.live is not None:
            dead |= ~catalogue.live
        found.append((todo, rows))
        pools.append((todo, rows))
        found_logits.append((todo, best.values))
        exact[todo] = True
        exact_log_z[todo] = torch.logsumexp(logits.masked_fill(dead[None], NEG_INF), dim=1)
    rows = _pad_rows(found, batch)
    logits = _pad_rows(found_logits, batch, fill=NEG_INF)
    eligible = logits > NEG_INF
    log_z = torch.where(exact, exact_log_z, pool_log_z)
    log_z = log_z.masked_fill(torch.isneginf(log_z), 0.0)  # no live row: nothing eligible
    log_probs = (logits - log_z[:, None]).masked_fill(~eligible, NEG_INF)
    return DenseFound(
        rows, _pad_rows(pools, batch), pool_log_z, exact, exact_log_z, log_probs, eligible
    )


def index_log_probs(
    state: torch.Tensor, catalogue: Catalogue, rows: torch.Tensor, dense: DenseFound
) -> torch.Tensor:
    """(B, M) candidate rows -> (B, M) log P_dense as the index path returns it: the exact
    logit minus log Z over the live rows whose logits were computed (pool and candidates;
    a lower bound of the exact log Z), or minus the exact log Z for requests scanned
    exactly; -inf for empty slots and dead rows.

    The pool's part of log Z was summed when the pool was scored (`DenseFound.pool_log_z`);
    only the candidates not in the pool (the beam's, each counted once) are added here, so
    the pool's vectors (1,000+ random rows of the item table) are not gathered twice."""
    logits = _row_logits(state, catalogue.item_vectors, rows)
    live = _live_at(rows, catalogue)
    pool = dense.pool.sort(dim=1).values
    at = torch.searchsorted(pool, rows).clamp(max=pool.shape[1] - 1)
    fresh = live & (pool.gather(1, at) != rows) & (dedupe(rows) == rows)
    extra = torch.logsumexp(logits.masked_fill(~fresh, NEG_INF), dim=1)
    log_z = torch.logaddexp(dense.pool_log_z, extra)
    log_z = torch.where(dense.exact, dense.exact_log_z, log_z)
    log_z = log_z.masked_fill(torch.isneginf(log_z), 0.0)  # no live row: nothing eligible
    return (logits - log_z[:, None]).masked_fill(~live, NEG_INF)
