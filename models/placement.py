"""Placement order: where a new item goes when its own code prefix has no dedup id left.

At every position of its served sequence the W nearest codes of that position's block (the
item's own code, then by the RQ-VAE's distance; W = `placement_width`), enumerated like an
odometer whose last position turns fastest. Step 0 is the item's own codes; steps 1 .. W - 1
change only its last token (the second-nearest code of that level first), then the
position before it moves to its second-nearest code, and so on up to MAX_PLACEMENT_STEPS
sequences. The order is deterministic and keeps the longest prefix shared with the item's
own codes first. The catalog stores walk it atomically (service/catalog/placement.py and
add_items.lua); cold start computes it (`models.cold_start`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.arrays import int_array
from models.tokens import CF, SEM, TokenLayout, served_positions

# the work of one assignment, not the code space: a step is one counter lookup inside the
# store's atomic Lua script or transaction (~0.25 us in Redis), so a 256-item request whose
# items all walk this far holds Redis ~1 s, under its clients' 2 s timeout. With the
# shipped shape (K = 512, L = 3, 13 dedup ids) it places about 210k items of one text.
MAX_PLACEMENT_STEPS = 1 << 14


def placement_width(codebook_size: int, budget: int) -> int:
    """W, the codes a placement order ranks per position: the fewest with W ** L >=
    MAX_PLACEMENT_STEPS (every position the same, so the coarse ones move last), at most
    K. L = 3: 26 of 512 codes; L = 1: all of them."""
    width = 1
    while width < codebook_size and width**budget < MAX_PLACEMENT_STEPS:
        width += 1
    return width


def placement_order(
    cf_ranked: np.ndarray,
    sem_ranked: np.ndarray,
    n_cf: np.ndarray | int,
    budget: int,
    layout: TokenLayout,
) -> np.ndarray:
    """Each item's placement order (module docstring): (N, L, W) int64 token ids, at every
    position of its served sequence the W nearest codes of that position's level, nearest
    first (W = `placement_width`).

    cf_ranked, sem_ranked: (N, >= L, K) every level's codes ranked for each item, its own
    code first (`models.cold_start.ranked_codes`); n_cf, budget, layout: as in
    `code_sequences`, whose row is then every item's step 0.
    """
    cf = int_array(cf_ranked, "cf_ranked")
    sem = int_array(sem_ranked, "sem_ranked")
    k = layout.codebook_size
    if cf.ndim != 3 or cf.shape != sem.shape or cf.shape[2] != k or cf.shape[1] < budget:
        raise ValueError(
            f"cf_ranked and sem_ranked must both be (N, >= {budget}, {k}), got {cf.shape} "
            f"and {sem.shape}"
        )
    n_items = cf.shape[0]
    n_cf_arr = np.broadcast_to(int_array(n_cf, "n_cf"), (n_items,))
    from_cf, level = served_positions(n_cf_arr, budget)  # (N, L)
    rows = np.arange(n_items)[:, None]
    codes = np.where(from_cf[..., None], cf[rows, level], sem[rows, level])  # (N, L, K)
    codes = codes[..., : placement_width(k, budget)]
    codebook = np.where(from_cf, CF, SEM)
    return layout.code_token(codebook[..., None], level[..., None], codes)


def placement_steps(order: np.ndarray | Sequence[Sequence[int]]) -> int:
    """How many steps of a placement order ((L, W) tokens) a store tries: every code
    sequence it spans, W ** L, up to MAX_PLACEMENT_STEPS."""
    return min(len(order[0]) ** len(order), MAX_PLACEMENT_STEPS)


def placement_prefix(order: np.ndarray | Sequence[Sequence[int]], step: int) -> tuple[int, ...]:
    """The L code tokens at `step` of one item's (L, W) placement order: position p takes
    its d_p-th code, d = the digits of `step` in base W, the last position's digit lowest
    (an odometer; step 0 is the item's own codes). The service's Lua script
    (service/catalog/add_items.lua) computes the same."""
    width = len(order[0])
    out = [0] * len(order)
    for pos in range(len(order) - 1, -1, -1):
        step, digit = divmod(step, width)
        out[pos] = int(order[pos][digit])
    return tuple(out)
