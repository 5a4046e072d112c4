"""Prefix index over item token sequences, for constrained decoding.

Every item is one fixed-length row of `depth` = L + 1 token ids (`models.tokens.item_tokens`).
The index is the trie of those rows, stored the way a decoding kernel wants it:

* BUILDER (here, NumPy, offline): `build_prefix_index` turns (N, depth) rows into CSR
  arrays over trie nodes. Vectorised: one lexsort, then per-depth unique prefixes found by
  comparing adjacent sorted rows (loops run over the depth only, never over items).
* DEVICE TABLES (`PrefixIndex.to_tensors`, layout in `models.device_index`): per depth,
  the same CSR with local node ids, in the narrowest integer types that hold them, plus
  each node's leaf run; the root, whose branching can be a whole codebook block, also as
  a dense (vocab_size,) mask and child map.
Items added at serving time live in a second, small index beside this one
(`models.overlay_index`); teacher forcing reads the same trie as per-depth path tables
(`models.path_tables`).

Node numbering: node 0 is the root (empty prefix); then the nodes of depth 1 (prefixes of
one token), depth 2, ... depth `depth - 1`, each depth in lexicographic order of its
prefixes. Edges out of a node are sorted by token. An edge out of a node of the last depth
(`depth - 1`) points to an ITEM id (the leaf payload), not a node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.arrays import int_array
from models.dense_window import DenseWindow, window_arrays
from models.device_index import (
    NO_CHILD,
    PAD_TOKEN,
    DeviceIndex,
    DeviceLevel,
    narrow_int,
    pad_level,
)


def check_items(
    item_tokens: object, item_ids: object, vocab_size: int, depth: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated ((N, depth) int64 rows, (N,) int64 ids); ValueError on any violation."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    rows = int_array(item_tokens, "item_tokens")
    ids = int_array(item_ids, "item_ids")
    if rows.ndim != 2 or rows.shape[1] < 1:
        raise ValueError(f"item_tokens must be (N, L + 1) with L + 1 >= 1, got shape {rows.shape}")
    if depth is not None and rows.shape[1] != depth:
        raise ValueError(f"item_tokens must have {depth} tokens per item, got {rows.shape[1]}")
    if ids.shape != (rows.shape[0],):
        raise ValueError(f"item_ids must be ({rows.shape[0]},), one per row, got {ids.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= vocab_size):
        bad = rows.min() if rows.min() < 0 else rows.max()
        raise ValueError(f"item_tokens must lie in [0, {vocab_size}), got {bad}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"item_ids must be >= 0 (-1 means 'no item'), got {ids.min()}")
    if np.unique(ids).size != ids.size:
        uniq, counts = np.unique(ids, return_counts=True)
        raise ValueError(f"item_ids must be unique, id {uniq[counts > 1][0]} appears twice")
    return rows, ids


@dataclass(frozen=True)
class PrefixIndex:
    """Immutable trie over (N, depth) item rows, CSR layout; build with `build_prefix_index`.

    row_ptr: (n_nodes + 1,); edges of node n are row_ptr[n]:row_ptr[n + 1].
    child_token: (n_edges,), sorted by token within a node.
    child_node: (n_edges,), global child node id; the item id at the last depth.
    (These three in the narrowest integer type that holds them, `narrow_int`; older
    bundles hold int64. Every result computed from them is int64.)
    max_branch: (depth,) int64, max children of any node of each depth (0 if none).
    root_mask: (vocab_size,) bool, valid first tokens.
    level_ptr: (depth + 1,) int64; nodes of depth k are level_ptr[k]:level_ptr[k + 1].
    """

    depth: int
    vocab_size: int
    row_ptr: np.ndarray
    child_token: np.ndarray
    child_node: np.ndarray
    max_branch: np.ndarray
    root_mask: np.ndarray
    level_ptr: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.row_ptr.shape[0] - 1)

    @property
    def n_items(self) -> int:
        """Items = edges out of the last depth's nodes."""
        return int(self.row_ptr[-1] - self.row_ptr[self.level_ptr[self.depth - 1]])

    def _edge_parent(self) -> np.ndarray:
        """(n_edges,) global node id owning each edge."""
        return np.repeat(np.arange(self.n_nodes, dtype=np.int64), np.diff(self.row_ptr))

    def lookup(self, item_tokens: object) -> np.ndarray:
        """(M, depth) token rows -> (M,) int64 item id of each row, -1 where it is no item.

        Vectorised walk: edges are sorted by (parent, token), so parent * V + token is a
        sorted key and one searchsorted per depth finds every row's child at once.
        """
        rows = int_array(item_tokens, "item_tokens")
        if rows.ndim != 2 or rows.shape[1] != self.depth:
            raise ValueError(f"rows must be (M, {self.depth}), got shape {rows.shape}")
        key = self._edge_parent() * self.vocab_size + self.child_token  # (n_edges,) sorted
        in_range = ((rows >= 0) & (rows < self.vocab_size)).all(axis=1)
        node = np.where(in_range, 0, -1)  # (M,) current node, -1 once the row fell off
        if key.shape[0] == 0:
            return np.full(rows.shape[0], -1, dtype=np.int64)
        for k in range(self.depth):
            want = np.where(node >= 0, node, 0) * self.vocab_size + rows[:, k]
            pos = np.minimum(np.searchsorted(key, want), key.shape[0] - 1)  # clamped
            child = self.child_node[pos].astype(np.int64)  # narrow storage: widen first
            node = np.where((node >= 0) & (key[pos] == want), child, -1)
        return node

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item: ((N, depth) int64 rows in lexicographic order, (N,) int64 ids)."""
        n_internal_edges = int(self.row_ptr[self.level_ptr[self.depth - 1]])
        # Every non-root node has exactly one incoming edge; edges below the last depth
        # point to nodes, so invert them to walk from a leaf edge back to the root.
        incoming = np.zeros(self.n_nodes, dtype=np.int64)
        incoming[self.child_node[:n_internal_edges]] = np.arange(n_internal_edges)
        parent = self._edge_parent()
        edge = np.arange(n_internal_edges, self.child_token.shape[0])  # (N,) leaf edges
        ids = self.child_node[edge].astype(np.int64)
        rows = np.empty((edge.shape[0], self.depth), dtype=np.int64)
        for k in range(self.depth - 1, -1, -1):
            rows[:, k] = self.child_token[edge]
            if k:
                edge = incoming[parent[edge]]
        return rows, ids

    def to_tensors(self, device: torch.device | str = "cpu") -> DeviceIndex:
        """The per-depth tables (CSR, or padded where cheap: `models.device_index`) in
        narrow integer types, as tensors on `device`."""
        root_child = np.full(self.vocab_size, NO_CHILD, dtype=np.int64)
        root_edges = slice(int(self.row_ptr[0]), int(self.row_ptr[1]))
        root_child[self.child_token[root_edges]] = self._local_child(0, self.child_node[root_edges])
        first_leaf = int(self.row_ptr[self.level_ptr[self.depth - 1]])
        n_items = self.child_node.shape[0] - first_leaf

        def tensor(values: np.ndarray, bound: int) -> torch.Tensor:
            return torch.from_numpy(narrow_int(values, bound)).to(device)

        levels: list[DeviceLevel] = []
        leaf_ptr_below = None  # the leaf pointers of depth k + 1, built deepest first
        for k in range(self.depth - 1, 0, -1):
            first, last = int(self.level_ptr[k]), int(self.level_ptr[k + 1])
            ptr = self.row_ptr[first : last + 1]
            edges = slice(int(ptr[0]), int(ptr[-1]))
            # Local pointers, plus the padding row's empty run at the end.
            row_ptr = np.append(ptr - ptr[0], ptr[-1] - ptr[0])
            child = self._local_child(k, self.child_node[edges])
            # At the last depth each child is one leaf, in leaf order. Above it, every node
            # of depth k + 1 has one incoming edge, in node order, so the local edge
            # position IS the child's local id: a node's run starts at its first child's
            # (the padding entries read the empty run [n_items, n_items)).
            leaf_ptr = row_ptr if k == self.depth - 1 else leaf_ptr_below[row_ptr]
            leaf_ptr_below = leaf_ptr
            last_depth = k == self.depth - 1
            if not last_depth and not np.array_equal(child, np.arange(len(child))):
                # The device level computes these children from row_ptr (DeviceLevel).
                raise ValueError(
                    f"prefix index: the nodes of depth {k + 1} are not numbered in the order "
                    "of their incoming edges (not an index build_prefix_index made)"
                )
            width = max(1, int(self.max_branch[k]))
            token = self.child_token[edges]
            padded = pad_level(last - first + 1, width, len(token))
            # Padded rows, or CSR with one sentinel slot at the end.
            token = self._padded(row_ptr, width, token) if padded else np.append(token, PAD_TOKEN)
            child_t = None
            if last_depth:  # item ids; above, the children are computed (DeviceLevel)
                child = (
                    self._padded(row_ptr, width, child) if padded else np.append(child, NO_CHILD)
                )
                child_t = tensor(child, int(child.max(initial=0)))
            window = None
            if padded and not last_depth:
                arrays = window_arrays(token, self.vocab_size)
                if arrays is not None:
                    start, mask, slot = arrays
                    window = DenseWindow(
                        start=torch.from_numpy(start).to(device),
                        mask=torch.from_numpy(mask).to(device),
                        slot=tensor(slot, width),
                    )
            row_t = tensor(row_ptr, int(row_ptr[-1]))
            levels.append(
                DeviceLevel(
                    row_ptr=row_t,
                    token=tensor(token, self.vocab_size),
                    child=child_t,
                    leaf_ptr=row_t if leaf_ptr is row_ptr else tensor(leaf_ptr, n_items),
                    width=width,
                    window=window,
                )
            )
        items = self.child_node[first_leaf:]
        first_id = int(items.min()) if items.size else 0
        leaf_of = np.full(int(items.max(initial=-1)) + 1 - first_id, -1, dtype=np.int64)
        leaf_of[items - first_id] = np.arange(n_items)
        if levels and not levels[0].padded:  # the last level's children, in leaf order
            leaf_items = levels[0].child[:-1]
        else:
            leaf_items = tensor(items, int(items.max(initial=0)))
        return DeviceIndex(
            depth=self.depth,
            vocab_size=self.vocab_size,
            root_mask=torch.from_numpy(self.root_mask.copy()).to(device),
            root_child=torch.from_numpy(root_child).to(device),
            levels=tuple(reversed(levels)),
            leaf_items=leaf_items,
            leaf_of=tensor(leaf_of, n_items),
            first_id=first_id,
        )

    @staticmethod
    def _padded(row_ptr: np.ndarray, width: int, values: np.ndarray) -> np.ndarray:
        """CSR values of one level -> (n + 1, width) rows, -1 in unused slots and in the
        padding row (row_ptr: (n + 2,) local pointers)."""
        n_rows = row_ptr.shape[0] - 1
        out = np.full((n_rows, width), -1, dtype=np.int64)
        counts = np.diff(row_ptr)
        node = np.repeat(np.arange(n_rows), counts)
        out[node, np.arange(len(values)) - np.repeat(row_ptr[:-1], counts)] = values
        return out

    def _local_child(self, k: int, child: np.ndarray) -> np.ndarray:
        """Children of depth-k nodes as local ids of depth k + 1 (item ids stay as they are)."""
        return child if k == self.depth - 1 else child - self.level_ptr[k + 1]


def build_prefix_index(item_tokens: object, item_ids: object, vocab_size: int) -> PrefixIndex:
    """Build the trie of (N, L + 1) item rows with (N,) item ids over a vocabulary of size V.

    Any row order gives the same index. N = 0 gives an empty index (no valid token).
    ValueError on wrong shapes, tokens outside [0, V), negative or repeated item ids, and
    duplicate rows (two items with the same sequence could never be told apart).
    """
    rows, ids = check_items(item_tokens, item_ids, vocab_size)
    n, depth = rows.shape
    # Column 0 is the primary key: lexsort takes its keys last-first.
    order = np.lexsort(rows.T[::-1])
    rows, ids = rows[order], ids[order]
    # first_diff[i]: first column where sorted row i + 1 differs from row i (depth if equal).
    neq = rows[1:] != rows[:-1]  # (N - 1, depth)
    first_diff = np.where(neq.any(axis=1), neq.argmax(axis=1), depth)
    if (first_diff == depth).any():
        i = int(np.flatnonzero(first_diff == depth)[0])
        raise ValueError(
            f"duplicate item rows: items {ids[i]} and {ids[i + 1]} both have tokens "
            f"{rows[i].tolist()} (add dedup tokens, see models.tokens.item_tokens)"
        )
    level_ptr = np.zeros(depth + 1, dtype=np.int64)
    level_ptr[1] = 1
    prefix_node = np.zeros(n, dtype=np.int64)  # (N,) node of each row's prefix of length k
    edge_tokens, edge_children, edge_parents = [], [], []
    max_branch = np.zeros(depth, dtype=np.int64)
    for k in range(depth):
        # Row i starts a new prefix of length k + 1 iff it differs from row i - 1 somewhere
        # in columns 0..k; such rows are exactly the edges out of depth-k nodes.
        new = np.ones(n, dtype=bool)
        new[1:] = first_diff <= k
        if k < depth - 1:
            count = int(new.sum())
            level_ptr[k + 2] = level_ptr[k + 1] + count
            child_node = level_ptr[k + 1] + np.cumsum(new) - 1  # (N,) node of length k + 1
        else:
            child_node = ids
        edge_tokens.append(rows[new, k])
        edge_children.append(child_node[new])
        edge_parents.append(prefix_node[new])
        if n:
            max_branch[k] = np.bincount(prefix_node[new]).max()
        prefix_node = child_node
    n_nodes = int(level_ptr[depth])
    parents = np.concatenate(edge_parents)
    row_ptr = np.zeros(n_nodes + 1, dtype=np.int64)
    # Edges are already grouped by parent in node order (depth by depth, lexicographic
    # within a depth) and sorted by token within a parent, so counts give the CSR offsets.
    np.cumsum(np.bincount(parents, minlength=n_nodes), out=row_ptr[1:])
    root_mask = np.zeros(vocab_size, dtype=bool)
    root_mask[edge_tokens[0]] = True
    child_node = np.concatenate(edge_children)
    # Stored in the narrowest integer types that hold them (int16 / int32 for any real
    # catalogue): the service keeps this CSR beside the device tables, and ships it.
    return PrefixIndex(
        depth=depth,
        vocab_size=int(vocab_size),
        row_ptr=narrow_int(row_ptr, int(row_ptr[-1])),
        child_token=narrow_int(np.concatenate(edge_tokens), vocab_size),
        child_node=narrow_int(child_node, int(child_node.max(initial=0))),
        max_branch=max_branch,
        root_mask=root_mask,
        level_ptr=level_ptr,
    )
