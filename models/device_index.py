"""The prefix index as the decoding kernel reads it: per-depth CSR tensors on one device.

Built by `models.prefix_index.PrefixIndex.to_tensors`; read by `models.beam_search` and
`models.allowed_items`. Kept apart from the builder so that the kernel's view of the trie
(and its memory per item) is one small module.

Why not padded (node, max_branch) tables throughout: at 1M items those cost 180 bytes
per item (one depth-2 node with 12 children pads 445,942 rows to 12 slots). A level whose
nodes are far from full is CSR instead (narrow integer types, about a sixth of that); a
level whose nodes are nearly full (depth 1 of a large catalogue) stays padded, since a
padded read is one `index_select` and the search spends most of its time there. The
kernel sees the same (M, W) slices either way (`DeviceLevel.tokens_of`, `children_of`).
A padded level whose nodes nearly fill runs of consecutive tokens also carries windows
(`models.dense_window`), which the unfiltered search reads instead of gathering tokens.
Only the last depth stores its children (item ids): above it a child's local id is its
edge position (`DeviceLevel`), so storing it would spend a third of the index's bytes
on an identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.dense_window import DenseWindow

PAD_TOKEN = -1  # token of a padding slot
NO_CHILD = -1  # child of a padding slot; also "no such node" in the decoder
# A level is stored padded when its (n + 1, W) rows hold at most PAD_WASTE slots per edge
# or PAD_MIN_SLOTS slots in all (CSR otherwise): padding then costs little memory and
# buys the faster read. With the shipped shape that pads depth 1 at 100k-1M items and
# every level of a 10k catalogue (bench: scripts/bench_index_memory.py).
PAD_WASTE = 1.5
PAD_MIN_SLOTS = 65_536


def pad_level(n_rows: int, width: int, n_edges: int) -> bool:
    """Whether a level of n_rows rows (padding row included) of at most `width` children,
    n_edges in all, is stored padded (`DeviceLevel`)."""
    slots = n_rows * width
    return slots <= PAD_MIN_SLOTS or slots <= PAD_WASTE * (n_edges + 1)


def narrow_int(values: np.ndarray, bound: int) -> np.ndarray:
    """`values` as the narrowest of int16 / int32 / int64 that holds -1 .. bound."""
    for dtype in (np.int16, np.int32):
        if bound <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.int64)


@dataclass(frozen=True)
class DeviceLevel:
    """The children of every node of one depth k (1 .. D - 1), on one device.

    row_ptr: (n + 2,) node r's children are edges row_ptr[r]:row_ptr[r + 1] (local node
        ids 0 .. n - 1); row n is the padding row, empty, that a missing node (-1) is
        clamped to (`rows`).
    token, child: the child tokens (ascending within a node) and, at the last depth only,
        the children (item ids), in one of two layouts: CSR, (E + 1,) each, entry E a
        sentinel (-1, -1) that empty slots read; or PADDED, (n + 1, W) each, -1 in unused
        slots and in the padding row. Above the last depth `child` is None: the builder
        numbers the nodes of depth k + 1 in the order of their incoming edges, so the
        child in edge position e is local node e, computed from row_ptr, never stored
        (it was a third of the index's bytes). Padded rows are one
        `index_select` per read, CSR rows a gather of computed positions (about 6x slower
        per element): `PrefixIndex.to_tensors` pads a level only where that costs little
        memory (`pad_level`), i.e. where nodes have close to W children each (the first
        depths of large catalogues, which are also where the search spends its time).
    leaf_ptr: (n + 2,) the items below node r are the leaves at positions
        [leaf_ptr[r], leaf_ptr[r + 1]) of the trie's leaf order (items in lexicographic
        order of their tokens; nodes of one depth partition it in order, so one pointer
        array gives every run); the padding row's run is empty. At the last depth it is
        row_ptr itself (each child is one leaf).
    width: W, the most children of any node of this depth (>= 1).
    Integer arrays are int16 / int32 where their values fit (`narrow_int`); everything
    read out of them is int64.
    """

    row_ptr: torch.Tensor
    token: torch.Tensor
    child: torch.Tensor | None
    leaf_ptr: torch.Tensor
    width: int
    # Above the last depth, a padded level whose nodes nearly fill a run of consecutive
    # tokens is also read as windows (`models.dense_window`); None otherwise.
    window: DenseWindow | None = None

    @property
    def padded(self) -> bool:
        return self.token.dim() == 2

    @property
    def pad_row(self) -> int:
        return int(self.row_ptr.shape[0] - 2)

    def rows(self, nodes: torch.Tensor) -> torch.Tensor:
        """Local node ids, -1 for none -> row ids, the padding row for none."""
        return torch.where(nodes >= 0, nodes, self.pad_row)

    def _slots(self, rows: torch.Tensor) -> torch.Tensor:
        """CSR: (M,) row ids -> (M, W) int64 edge positions of each row's children, in
        slot order, the sentinel for slots past the row's last child."""
        start = self.row_ptr[rows].long()
        stop = self.row_ptr[rows + 1].long()
        pos = start[:, None] + torch.arange(self.width, device=rows.device)
        return torch.where(pos < stop[:, None], pos, self.token.shape[0] - 1)

    def tokens_of(self, rows: torch.Tensor) -> torch.Tensor:
        """(M,) row ids -> (M, W) int64 child tokens, ascending, -1 padding."""
        if self.padded:
            return self.token.index_select(0, rows).long()
        return self.token[self._slots(rows)].long()

    def children_of(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M,) row ids -> ((M, W) child tokens, (M, W) children), int64, -1 padding."""
        if self.padded:
            tok = self.token.index_select(0, rows).long()
            if self.child is not None:
                return tok, self.child.index_select(0, rows).long()
            first = self.row_ptr.index_select(0, rows).long()
            pos = first[:, None] + torch.arange(self.width, device=rows.device)
            return tok, torch.where(tok >= 0, pos, NO_CHILD)
        pos = self._slots(rows)
        if self.child is not None:
            return self.token[pos].long(), self.child[pos].long()
        return self.token[pos].long(), torch.where(pos < self.token.shape[0] - 1, pos, NO_CHILD)

    def child_at(self, rows: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Rows and slots (0 <= slot < W) of the same shape -> the child in that slot
        (int64, -1 for a slot past the row's last child)."""
        if self.padded and self.child is not None:
            return self.child.view(-1)[rows * self.width + slot].long()
        pos = self.row_ptr[rows].long() + slot
        valid = pos < self.row_ptr[rows + 1].long()
        if self.child is None:
            return torch.where(valid, pos, NO_CHILD)
        return torch.where(valid, self.child[pos.clamp(max=self.child.shape[0] - 1)].long(), -1)

    def leaf_runs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ids -> (lo, hi) int64, the leaf positions [lo, hi) below each row."""
        return self.leaf_ptr[rows].long(), self.leaf_ptr[rows + 1].long()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        stored = (self.row_ptr, self.token, self.child, self.leaf_ptr)
        window = () if self.window is None else self.window.tensors()
        return tuple(t for t in stored if t is not None) + window


@dataclass(frozen=True)
class DeviceIndex:
    """A PrefixIndex as tensors on one device, read by `models.beam_search`.

    depth: D = L + 1; vocab_size: V.
    root_mask: (V,) bool, valid first tokens.
    root_child: (V,) int64, the depth-1 node (local id) of each first token, or the item id
        when D == 1; -1 for invalid tokens. The root, whose branching can be a whole
        codebook block, is read densely, not through a level.
    levels[k - 1] for k = 1 .. D - 1: the children of the nodes of depth k (DeviceLevel).
    leaf_items: (n_items,) the item id at each leaf position (a view of the last level's
        children, no copy, when that level is CSR).
    leaf_of: (span,) the leaf position of item id first_id + j, -1 where that id is not in
        the index: item id -> leaf position by one gather (ids are catalogue rows, dense).
    """

    depth: int
    vocab_size: int
    root_mask: torch.Tensor
    root_child: torch.Tensor
    levels: tuple[DeviceLevel, ...]
    leaf_items: torch.Tensor
    leaf_of: torch.Tensor
    first_id: int = 0

    @property
    def device(self) -> torch.device:
        return self.root_mask.device

    @property
    def empty(self) -> bool:
        """No items: no nodes below the root (depth > 1), or no valid first token."""
        if self.depth > 1:
            return all(level.pad_row == 0 for level in self.levels)
        return not bool(self.root_mask.any())

    @property
    def n_items(self) -> int:
        return int(self.leaf_items.shape[0])

    @property
    def last_id(self) -> int:
        """The largest item id the index could hold (first_id - 1 when empty)."""
        return self.first_id + int(self.leaf_of.shape[0]) - 1

    def leaf_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Item ids (any shape, any values) -> their int64 leaf positions, -1 for ids the
        index does not hold."""
        span = int(self.leaf_of.shape[0])
        if span == 0:
            return torch.full_like(ids, -1)
        j = ids - self.first_id
        inside = (j >= 0) & (j < span)
        return torch.where(inside, self.leaf_of[j.clamp(0, span - 1)].long(), -1)

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor (the V-sized root maps included)."""
        arrays = [self.root_mask, self.root_child, self.leaf_of]
        if self.depth == 1 or self.levels[-1].padded:  # else a view of the last children
            arrays.append(self.leaf_items)
        for level in self.levels:  # leaf_ptr is row_ptr at the last depth: count it once
            arrays += [a for a in level.tensors() if all(a is not b for b in arrays)]
        return sum(a.nelement() * a.element_size() for a in arrays)
