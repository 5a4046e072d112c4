"""The dense head's candidates from an approximate index (`models.dense_index`), for
catalogues too large to score every row per request (docs/method.md, decoding): the
index's top rows plus every row added at serving time, blocked rows dropped, exact
logits for what is kept; a request the index leaves short is widened, then scanned
exactly, so it still gets k results whenever k eligible rows exist."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from models.row_sets import NEG_INF, blocked_rows, dedupe, excluded_mask

if TYPE_CHECKING:
    from models.decoding import Catalogue


def _row_logits(state: torch.Tensor, vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, C) states, (R, C) item vectors, (B, M) rows (-1 allowed) -> (B, M) state . v_row,
    exactly, for the listed rows only (-1 slots read row 0)."""
    picked = vectors.float()[rows.clamp(min=0)]  # (B, M, C)
    return torch.einsum("bc,bmc->bm", state.float(), picked)


def _live_at(rows: torch.Tensor, catalogue: Catalogue) -> torch.Tensor:
    """(B, M) rows (-1 allowed) -> (B, M) bool: a real row that is live (in the
    normaliser), whether or not a request may be shown it."""
    live = rows > 0
    if catalogue.live is not None:
        live &= catalogue.live[rows.clamp(min=0)]
    return live


def blocked_at(
    rows: torch.Tensor,
    catalogue: Catalogue,
    exclude: torch.Tensor | None,
    allowed: torch.Tensor | None,
) -> torch.Tensor:
    """(B, M) rows (-1 allowed) -> (B, M) bool: `blocked_rows` read at those rows only
    (empty slots and padding blocked), without building the (B, R) mask."""
    safe = rows.clamp(min=0)
    bad = ~_live_at(rows, catalogue)
    bad |= excluded_mask(exclude, rows)
    if allowed is not None:
        bad |= ~allowed.gather(1, safe)
    return bad


def _pad_rows(parts: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> torch.Tensor:
    """[(request indices (b,), rows (b, M_i))] -> (batch, max M_i) int64, -1 padding."""
    width = max(p.shape[1] for _, p in parts)
    out = torch.full((batch, width), -1, dtype=torch.int64, device=parts[0][1].device)
    for which, part in parts:
        out[which, : part.shape[1]] = part
    return out


@dataclass(frozen=True)
class DenseFound:
    """The dense candidates the index path found for B requests.

    rows: (B, n) int64 the best eligible rows, -1 padding.
    pool: (B, P) int64 every row whose logit was computed (the normaliser's rows), -1 pad.
    pool_log_z: (B,) float log-sum-exp of the live pool rows' exact logits, kept so the
        scorer does not gather the pool's vectors again (-inf for exact requests).
    exact: (B,) bool the requests scanned exactly (the index found too few).
    exact_log_z: (B,) float the exact log Z of those requests (0 elsewhere).
    """

    rows: torch.Tensor
    pool: torch.Tensor
    pool_log_z: torch.Tensor
    exact: torch.Tensor
    exact_log_z: torch.Tensor


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
    k results whenever k eligible rows exist)."""
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
    pool_log_z = torch.full((batch,), NEG_INF, dtype=torch.float32, device=device)
    for _ in range(2):  # the first ask, then one widened
        sub_ex = None if exclude is None else exclude[todo]
        sub_allowed = None if allowed is None else allowed[todo]
        ann_rows, _ = index.search(state[todo], m)
        pool = torch.cat([ann_rows, added[None].expand(len(todo), -1)], dim=1)
        logits = _row_logits(state[todo], vectors, pool)
        bad = blocked_at(pool, catalogue, sub_ex, sub_allowed)
        best = logits.masked_fill(bad, NEG_INF).topk(min(n_dense, pool.shape[1]), dim=1)
        rows = torch.where(best.values > NEG_INF, pool.gather(1, best.indices), -1)
        enough = (rows > 0).sum(dim=1) >= n_dense
        found.append((todo[enough], rows[enough]))
        pools.append((todo[enough], pool[enough]))
        live = _live_at(pool[enough], catalogue)
        pool_log_z[todo[enough]] = torch.logsumexp(
            logits[enough].masked_fill(~live, NEG_INF), dim=1
        )
        todo = todo[~enough]
        if not len(todo) or m >= index.index.ntotal:
            break
        m *= index.widen
    exact = torch.zeros(batch, dtype=torch.bool, device=device)
    exact_log_z = torch.zeros(batch, dtype=torch.float32, device=device)
    if len(todo):  # the index's rows could not give them n_dense: the exact scan
        sub_ex = None if exclude is None else exclude[todo]
        sub_allowed = None if allowed is None else allowed[todo]
        logits = state[todo].float() @ vectors.float().T
        blocked = blocked_rows(len(todo), catalogue, sub_ex, device, sub_allowed)
        rows = logits.masked_fill(blocked, NEG_INF).topk(n_dense, dim=1).indices
        dead = torch.zeros(catalogue.n_rows, dtype=torch.bool, device=device)
        dead[0] = True
        if catalogue.live is not None:
            dead |= ~catalogue.live
        found.append((todo, rows))
        pools.append((todo, rows))
        exact[todo] = True
        exact_log_z[todo] = torch.logsumexp(logits.masked_fill(dead[None], NEG_INF), dim=1)
    return DenseFound(
        _pad_rows(found, batch), _pad_rows(pools, batch), pool_log_z, exact, exact_log_z
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
