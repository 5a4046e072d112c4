"""Teacher-forcing tables of a catalogue's token rows (`PathTables`): per depth the trie's
nodes, their children and every row's slot, so log P(row) under the restricted softmax
reads only each node's children (`models.generator.Generator.path_log_probs`). Built from
the token rows directly (training and evaluation), not from a `PrefixIndex`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.arrays import int_array


@dataclass(frozen=True)
class PathTables:
    """Teacher-forcing view of a catalogue's token rows: for every depth k, the distinct
    prefixes of length k (the tree's nodes at that depth), each node's children, and for
    every row its node and the slot of its own token among that node's children. With
    them, log P(row) under the restricted softmax needs only each node's children's
    logits (`Generator.path_log_probs`), never the whole vocabulary, and scoring every
    row decodes each node once, not each row (`Generator.all_rows_log_probs`).

    prefixes[k]: (G_k, k) int64 tokens of each depth-k node (G_0 = 1, the root).
    children[k]: (G_k, W_k) int64 child tokens of each node, ascending, -1 padding.
    below[k]: (G_k,) int64 a deepest node (depth D - 1) under each depth-k node: decoding
        the deepest nodes' prefixes yields every shallower node's state on the way.
    node: (R, D) int64 row r's node at depth k; slot: (R, D) int64 its token's slot there.
    Rows outside the catalogue (row 0, retired rows) have node and slot -1.
    """

    prefixes: tuple[torch.Tensor, ...]
    children: tuple[torch.Tensor, ...]
    below: tuple[torch.Tensor, ...]
    node: torch.Tensor
    slot: torch.Tensor

    @property
    def depth(self) -> int:
        return len(self.children)


def build_path_tables(
    item_tokens: object, rows: object, device: torch.device | str = "cpu"
) -> PathTables:
    """PathTables over the given rows of (R, D) item tokens (the other rows get -1).

    rows: (M,) int64 row ids in the catalogue (e.g. 1..N); their token rows must be unique
    (what `build_prefix_index` also requires)."""
    tokens = int_array(item_tokens, "item_tokens")
    rows = int_array(rows, "rows")
    n_rows, depth = tokens.shape
    picked = tokens[rows]  # (M, D)
    if np.unique(picked, axis=0).shape[0] != picked.shape[0]:
        raise ValueError("duplicate item rows: every row's tokens must be unique")
    node = np.full((n_rows, depth), -1, dtype=np.int64)
    slot = np.full((n_rows, depth), -1, dtype=np.int64)
    prefixes, children = [], []
    for k in range(depth):
        if k == 0:
            prefix, group = np.zeros((1, 0), dtype=np.int64), np.zeros(len(rows), np.int64)
        else:
            prefix, group = np.unique(picked[:, :k], axis=0, return_inverse=True)
            group = group.reshape(-1)
        pairs, pair_of = np.unique(
            np.stack([group, picked[:, k]], axis=1), axis=0, return_inverse=True
        )  # (P, 2) distinct (node, token), sorted: tokens ascend within a node
        pair_of = pair_of.reshape(-1)
        sizes = np.bincount(pairs[:, 0], minlength=len(prefix))
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        pair_slot = np.arange(len(pairs)) - first[pairs[:, 0]]
        table = np.full((len(prefix), max(1, int(sizes.max(initial=1)))), -1, dtype=np.int64)
        table[pairs[:, 0], pair_slot] = pairs[:, 1]
        node[rows, k] = group
        slot[rows, k] = pair_slot[pair_of]
        prefixes.append(torch.as_tensor(prefix, device=device))
        children.append(torch.as_tensor(table, device=device))
    below = []
    for k in range(depth):
        under = np.zeros(len(prefixes[k]), dtype=np.int64)
        under[node[rows, k]] = node[rows, depth - 1]  # any row's deepest node will do
        below.append(torch.as_tensor(under, device=device))
    return PathTables(
        prefixes=tuple(prefixes),
        children=tuple(children),
        below=tuple(below),
        node=torch.as_tensor(node, device=device),
        slot=torch.as_tensor(slot, device=device),
    )
