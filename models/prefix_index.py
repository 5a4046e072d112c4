"""Prefix index over item token sequences, for constrained decoding.

Every item is one fixed-length row of `depth` = L + 1 token ids (`models.tokens.item_tokens`).
The index is the trie of those rows, stored the way a decoding kernel wants it:

* BUILDER (here, NumPy, offline): `build_prefix_index` turns (N, depth) rows into CSR
  arrays over trie nodes. Vectorised: one lexsort, then per-depth unique prefixes found by
  comparing adjacent sorted rows (loops run over the depth only, never over items).
* DEVICE TABLES (`PrefixIndex.to_tensors`): per depth k, a padded (n_nodes_k + 1, W_k)
  table of (token, child) pairs, W_k = max_branch[k], pad token -1, with one extra padding
  row at the end that a missing node (-1) is clamped to. Padding per depth (not to the global
  maximum) keeps memory bounded for 1M items; the root, whose branching can be a whole
  codebook block, is also given as a dense (vocab_size,) mask and child map.
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

PAD_TOKEN = -1  # token of a padding slot in the device tables
NO_CHILD = -1  # child of a padding slot; also "no such node" in the decoder


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
class DeviceIndex:
    """A PrefixIndex as tensors on one device, read by `models.beam_search`.

    depth: D = L + 1; vocab_size: V.
    root_mask: (V,) bool, valid first tokens.
    root_child: (V,) int64, the depth-1 node (local id) of each first token, or the item id
        when D == 1; -1 for invalid tokens.
    tokens[k - 1], children[k - 1] for k = 1 .. D - 1: (n_k + 1, W_k) int64 tables of the
        nodes of depth k (row = local node id, local id = global id - level_ptr[k]),
        W_k = max(1, max_branch[k]); slot j holds the node's j-th child token (ascending)
        and its child: a local node id of depth k + 1, or an item id when k = D - 1.
        Unused slots hold token -1 / child -1. Row n_k is the padding row (all -1): the
        decoder clamps a missing node (-1) to it, so gathers never go out of range.
    leaf_lo[k - 1], leaf_hi[k - 1] for k = 1 .. D - 1: (n_k + 1,) int64, the items below
        each node of depth k are the leaves at positions [lo, hi) of the trie's leaf order
        (items in lexicographic order of their tokens); the padding row is the empty
        [0, 0). With them, "does some allowed item lie below this prefix" is two
        searchsorted calls over a request's sorted allowed leaf positions
        (`models.beam_search`, `allowed`), whatever the catalogue size.
    leaf_ids: (n_items,) int64 the item ids in ascending order; leaf_pos: (n_items,) int64
        the leaf position of each of them (item id -> position by one searchsorted).
    """

    depth: int
    vocab_size: int
    root_mask: torch.Tensor
    root_child: torch.Tensor
    tokens: tuple[torch.Tensor, ...]
    children: tuple[torch.Tensor, ...]
    leaf_lo: tuple[torch.Tensor, ...] = ()
    leaf_hi: tuple[torch.Tensor, ...] = ()
    leaf_ids: torch.Tensor | None = None
    leaf_pos: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.root_mask.device


@dataclass(frozen=True)
class PrefixIndex:
    """Immutable trie over (N, depth) item rows, CSR layout; build with `build_prefix_index`.

    row_ptr: (n_nodes + 1,) int64; edges of node n are row_ptr[n]:row_ptr[n + 1].
    child_token: (n_edges,) int64, sorted by token within a node.
    child_node: (n_edges,) int64, global child node id; the item id at the last depth.
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
            node = np.where((node >= 0) & (key[pos] == want), self.child_node[pos], -1)
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
        ids = self.child_node[edge]
        rows = np.empty((edge.shape[0], self.depth), dtype=np.int64)
        for k in range(self.depth - 1, -1, -1):
            rows[:, k] = self.child_token[edge]
            if k:
                edge = incoming[parent[edge]]
        return rows, ids

    def to_tensors(self, device: torch.device | str = "cpu") -> DeviceIndex:
        """The padded per-depth (token, child) tables as tensors on `device` (DeviceIndex)."""
        parent = self._edge_parent()
        rank = np.arange(self.child_token.shape[0]) - self.row_ptr[parent]  # slot in its node
        root_child = np.full(self.vocab_size, NO_CHILD, dtype=np.int64)
        root_edges = slice(int(self.row_ptr[0]), int(self.row_ptr[1]))
        root_child[self.child_token[root_edges]] = self._local_child(0, self.child_node[root_edges])
        tokens, children = [], []
        for k in range(1, self.depth):
            first, last = int(self.level_ptr[k]), int(self.level_ptr[k + 1])
            width = max(1, int(self.max_branch[k]))
            tok = np.full((last - first + 1, width), PAD_TOKEN, dtype=np.int64)
            child = np.full((last - first + 1, width), NO_CHILD, dtype=np.int64)
            edges = slice(int(self.row_ptr[first]), int(self.row_ptr[last]))
            local = parent[edges] - first
            tok[local, rank[edges]] = self.child_token[edges]
            child[local, rank[edges]] = self._local_child(k, self.child_node[edges])
            tokens.append(torch.from_numpy(tok).to(device))
            children.append(torch.from_numpy(child).to(device))
        lo, hi, leaf_ids, leaf_pos = self._leaf_ranges()
        return DeviceIndex(
            depth=self.depth,
            vocab_size=self.vocab_size,
            root_mask=torch.from_numpy(self.root_mask.copy()).to(device),
            root_child=torch.from_numpy(root_child).to(device),
            tokens=tuple(tokens),
            children=tuple(children),
            leaf_lo=tuple(torch.from_numpy(x).to(device) for x in lo),
            leaf_hi=tuple(torch.from_numpy(x).to(device) for x in hi),
            leaf_ids=torch.from_numpy(leaf_ids).to(device),
            leaf_pos=torch.from_numpy(leaf_pos).to(device),
        )

    def _leaf_ranges(self) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
        """Per depth k = 1 .. D - 1, (n_k + 1,) lo and hi: the leaf positions [lo, hi) below
        each node (padding row [0, 0)); and (ids ascending, their leaf positions).

        Leaf edges are stored in lexicographic order of their items' tokens, so the items
        below any node are a contiguous run of them: a last-depth node's run is its own
        edges, a shallower node's runs from its first child's lo to its last child's hi
        (children are consecutive node ids). Vectorised per depth."""
        first_leaf = int(self.row_ptr[self.level_ptr[self.depth - 1]])
        items = self.child_node[first_leaf:]
        order = np.argsort(items, kind="stable")
        leaf_ids, leaf_pos = items[order].astype(np.int64), order.astype(np.int64)
        lo: list[np.ndarray] = [np.zeros(0, np.int64)] * max(0, self.depth - 1)
        hi: list[np.ndarray] = list(lo)
        for k in range(self.depth - 1, 0, -1):
            first, last = int(self.level_ptr[k]), int(self.level_ptr[k + 1])
            start, stop = self.row_ptr[first:last], self.row_ptr[first + 1 : last + 1]
            if k == self.depth - 1:
                k_lo, k_hi = start - first_leaf, stop - first_leaf
            else:  # child nodes are global ids of depth k + 1: make them local
                below = self.level_ptr[k + 1]
                k_lo = lo[k][self.child_node[start] - below] if last > first else start
                k_hi = hi[k][self.child_node[stop - 1] - below] if last > first else stop
            lo[k - 1] = np.append(np.asarray(k_lo, np.int64), 0)  # + the padding row
            hi[k - 1] = np.append(np.asarray(k_hi, np.int64), 0)
        return lo, hi, leaf_ids, leaf_pos

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
    return PrefixIndex(
        depth=depth,
        vocab_size=int(vocab_size),
        row_ptr=row_ptr,
        child_token=np.concatenate(edge_tokens),
        child_node=np.concatenate(edge_children),
        max_branch=max_branch,
        root_mask=root_mask,
        level_ptr=level_ptr,
    )
