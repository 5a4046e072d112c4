"""Business-rule filters inside the beam search: which prefixes still have an allowed
item below them, per request (`constrained_beam_search`'s `allowed`).

Kept apart from the search kernel: the kernel asks two questions of a filter, "is this
item allowed" and "is this node live", and this module answers them in whichever form the
filter came in (a short sorted id list, or a row mask for broad filters), over the prefix
index's per-node leaf runs (`DeviceLevel.leaf_ptr`).
"""

from __future__ import annotations

import torch

from models.device_index import DeviceIndex
from models.sorted_lookup import lookup_sorted

INT64_MAX = torch.iinfo(torch.int64).max


class AllowedItems:
    """A batch's allowed items in the form the search tests them with, per request.

    Sparse (from (B, P) int64 ids, P small: an allowlist): the ids sorted, and per trie the
    allowed items' leaf positions sorted; membership and "how many allowed items lie in
    the leaf run [lo, hi)" are batched searchsorted calls. Dense (from a (B, R) bool row
    mask: a broad filter such as a category or a denylist): the mask itself, and per trie
    the prefix counts of allowed leaves in leaf order, (B, n + 1) int32; both tests are
    gathers. Listing a broad filter's ids instead cost 8 of 10 s of a 1M-item batch of
    32 (BENCHMARKS.md, filters at 1M items)."""

    def __init__(self, allowed: torch.Tensor, base: DeviceIndex, over: DeviceIndex | None):
        self.dense = allowed.dtype == torch.bool
        if self.dense:
            self.mask = allowed
            self.base = self._prefix_counts(base)
            self.over = self._prefix_counts(over) if over is not None else None
        else:
            if allowed.shape[1] == 0:  # nothing allowed: one padding column keeps shapes
                allowed = torch.full((allowed.shape[0], 1), -1, dtype=torch.int64)
            # Padding as INT64_MAX sorts last, so searchsorted can test membership.
            ids = torch.where(allowed >= 0, allowed, INT64_MAX).sort(dim=1).values
            self.ids = ids
            self.base = self._leaf_positions(base)
            self.over = self._leaf_positions(over) if over is not None else None

    def _prefix_counts(self, index: DeviceIndex) -> torch.Tensor:
        """(B, n + 1) int32: allowed leaves among the trie's first j leaf positions."""
        if index.n_items and index.last_id >= self.mask.shape[1]:
            raise ValueError(
                f"allowed mask covers rows 0..{self.mask.shape[1] - 1}, but the index holds "
                f"item {index.last_id}"
            )
        n_req, n = self.mask.shape[0], index.n_items
        counts = torch.zeros(n_req, n + 1, dtype=torch.int32, device=self.mask.device)
        in_order = self.mask[:, index.leaf_items.long()].to(torch.int32)
        torch.cumsum(in_order, dim=1, out=counts[:, 1:])
        return counts

    def _leaf_positions(self, index: DeviceIndex) -> torch.Tensor:
        """(B, P) ascending leaf positions in this trie of the allowed items it holds,
        INT64_MAX for the rest (`DeviceIndex.leaf_positions`)."""
        pos = index.leaf_positions(self.ids)
        return torch.where(pos >= 0, pos, INT64_MAX).sort(dim=1).values

    def holds(self, item: torch.Tensor) -> torch.Tensor:
        """(B, C) item ids (-1 = none) -> (B, C) bool: the item is allowed."""
        if self.dense:
            return self.mask.gather(1, item.clamp(min=0)) & (item >= 0)
        at = torch.searchsorted(self.ids, item.contiguous()).clamp_(max=self.ids.shape[1] - 1)
        return (self.ids.gather(1, at) == item) & (item >= 0)

    def live_nodes(
        self, index: DeviceIndex, overlay: bool, depth: int, nodes: torch.Tensor
    ) -> torch.Tensor:
        """(B, X) local node ids of `depth` in the base trie or the overlay (-1 = none)
        -> (B, X) bool: some allowed item lies below the node, i.e. in its leaf run
        [lo, hi) (`DeviceLevel.leaf_runs`)."""
        table = self.over if overlay else self.base
        level = index.levels[depth - 1]
        lo, hi = level.leaf_runs(level.rows(nodes))  # the padding row's run is empty
        if self.dense:
            count = table.gather(1, hi) - table.gather(1, lo)
        else:
            count = torch.searchsorted(table, hi) - torch.searchsorted(table, lo)
        return (count > 0) & (nodes >= 0)


def live_candidates(
    base: DeviceIndex,
    over: DeviceIndex | None,
    t: int,
    node_b: torch.Tensor,
    node_o: torch.Tensor,
    tok: torch.Tensor | None,
    allowed: AllowedItems,
    root_b: torch.Tensor,
    root_o: torch.Tensor,
) -> torch.Tensor:
    """(B, C) bool, in the candidate layout of step t (not the last): the candidate's
    prefix has an allowed item below it, in either trie. tok: (B, W, S) the step's child
    tokens (None at t = 0, where candidate j is token j)."""
    n_req = node_b.shape[0]
    if t == 0:
        live = allowed.live_nodes(base, False, 1, root_b.expand(n_req, -1))
        if over is not None:
            live |= allowed.live_nodes(over, True, 1, root_o.expand(n_req, -1))
        return live
    level_b = base.levels[t - 1]
    _, kid_b = level_b.children_of(level_b.rows(node_b).view(-1))  # (B * W, Wb) depth t + 1
    wb = kid_b.shape[1]
    live = allowed.live_nodes(base, False, t + 1, kid_b.view(n_req, -1))
    if over is None:
        return live
    level_o = over.levels[t - 1]
    tok_o, kids_o = level_o.children_of(level_o.rows(node_o).view(-1))  # (B * W, Wo)
    # A base slot's prefix may have overlay items below it too: its token's overlay child.
    tok_b = tok.view(n_req * node_b.shape[1], -1)[:, :wb]
    _, shared_o = lookup_sorted(tok_o, kids_o, tok_b)
    live_b = live.view(n_req * node_b.shape[1], wb)
    live_b |= allowed.live_nodes(over, True, t + 1, shared_o.view(n_req, -1)).view_as(live_b)
    live_o = allowed.live_nodes(over, True, t + 1, kids_o.view(n_req, -1))
    live_o = live_o.view(-1, kids_o.shape[1])
    return torch.cat([live_b, live_o], dim=1).view(n_req, -1)
