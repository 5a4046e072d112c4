"""Where a new item's dedup ids start under a code prefix: after the largest one the
bundle's items use there. A walk down the prefix index (`models.prefix_index`), kept
apart from its builders because only the cold-start path of serving needs it.

The catalog stores compute the same bases from the bundle's token rows
(`service.catalog.placement.bundle_bases`); the two must agree, which
tests/service/test_dedup_placement.py checks.
"""

from __future__ import annotations

import numpy as np

from models.prefix_index import PrefixIndex


def bundle_next_dedup(index: PrefixIndex, prefixes: np.ndarray, dedup_offset: int) -> np.ndarray:
    """(M, L) code prefixes -> (M,) first dedup id after the largest the bundle uses for
    each prefix (0 for a prefix no bundle item has). A walk down the CSR trie per row:
    M is one /items batch, so a Python loop over it costs less than building tables."""
    out = np.zeros(len(prefixes), dtype=np.int64)
    row_ptr, child_token, child_node = index.row_ptr, index.child_token, index.child_node
    for m, row in enumerate(np.asarray(prefixes, dtype=np.int64)):
        node = 0
        for tok in row:
            lo, hi = int(row_ptr[node]), int(row_ptr[node + 1])
            j = lo + int(np.searchsorted(child_token[lo:hi], tok))
            if j >= hi or child_token[j] != tok:
                node = -1
                break
            node = int(child_node[j])
        if node >= 0:
            lo, hi = int(row_ptr[node]), int(row_ptr[node + 1])
            if hi > lo:  # dedup tokens sorted ascending: the last is the largest
                out[m] = int(child_token[hi - 1]) - dedup_offset + 1
    return out
