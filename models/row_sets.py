"""Per-request row sets for decoding: which catalogue rows a request may not get
(padding, dead rows, its exclusions, what its filter does not allow), as masks or
sorted id lists. Shared by the served decoding (`models.decoding`) and the dense index
path (`models.dense_candidates`).

A filter (`allowed`) comes in one of two forms: a (B, R) bool row mask (a category, a
denylist: many rows), or (B, P) int64 row lists, -1 padding (a short allowlist: a mask
would cost a catalogue-sized tensor per request, which at 1M rows was most of a
filtered batch's time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from models.decoding import Catalogue

NEG_INF = float("-inf")


def listed_mask(listed: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """(B, E) row lists (-1 padding), (B, M) candidate rows -> (B, M) bool: the row is
    in its request's list (a -1 slot matches padding: callers block empty slots)."""
    if listed is None or listed.shape[1] == 0:
        return torch.zeros_like(rows, dtype=torch.bool)
    ex = listed.sort(dim=1).values
    pos = torch.searchsorted(ex, rows.contiguous()).clamp_(max=ex.shape[1] - 1)
    return ex.gather(1, pos) == rows


def is_row_list(allowed: torch.Tensor | None) -> bool:
    """Whether a filter came as (B, P) int64 row lists rather than a (B, R) bool mask."""
    return allowed is not None and allowed.dtype == torch.int64


def allowed_at(allowed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A filter in either form, (B, M) rows (-1 allowed) -> (B, M) bool: the filter
    allows the row (never an empty slot)."""
    if is_row_list(allowed):
        return listed_mask(allowed, rows) & (rows > 0)
    return allowed.gather(1, rows.clamp(min=0)) & (rows >= 0)


def dedupe(rows: torch.Tensor) -> torch.Tensor:
    """(B, M) rows -> (B, M) rows with repeats (after their first occurrence) set to -1."""
    order = rows.sort(dim=1, stable=True)
    repeat = torch.zeros_like(rows, dtype=torch.bool)
    repeat[:, 1:] = order.values[:, 1:] == order.values[:, :-1]
    out = rows.clone()
    out.scatter_(1, order.indices, torch.where(repeat, -1, order.values))
    return out


def blocked_rows(
    batch: int,
    catalogue: Catalogue,
    exclude: torch.Tensor | None,
    device: torch.device,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, R) bool rows never to return: padding, dead rows, each request's exclusions
    and, with a filter (either form), every row it does not allow."""
    if allowed is None:
        blocked = torch.zeros(batch, catalogue.n_rows, dtype=torch.bool, device=device)
    elif is_row_list(allowed):
        listed = allowed.to(device)
        blocked = torch.ones(batch, catalogue.n_rows, dtype=torch.bool, device=device)
        blocked.scatter_(1, listed.clamp(min=0), listed < 0)  # -1 padding lands on row 0
    else:
        blocked = ~allowed.to(device)
    if exclude is not None and exclude.shape[1]:
        ex = exclude.to(device)
        blocked.scatter_(1, ex.clamp(min=0), ex >= 0)  # -1 padding lands on row 0
    if catalogue.live is not None:
        blocked |= ~catalogue.live[None]
    blocked[:, 0] = True
    return blocked


def rows_of(mask: torch.Tensor) -> torch.Tensor:
    """(B, R) bool -> (B, P) int64 the True columns of each row, ascending, -1 padding
    (P = the largest count, at least 1). One nonzero, no loop over requests."""
    counts = mask.sum(dim=1)
    width = max(1, int(counts.max())) if mask.shape[0] else 1
    out = torch.full((mask.shape[0], width), -1, dtype=torch.int64, device=mask.device)
    b, r = mask.nonzero(as_tuple=True)  # row-major: grouped by request, rows ascending
    starts = torch.cumsum(counts, dim=0) - counts
    out[b, torch.arange(b.shape[0], device=mask.device) - starts[b]] = r
    return out
