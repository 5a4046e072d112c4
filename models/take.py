"""Rows of a table picked by an index tensor of any shape, the gather every decoding
step does (item vectors, token rows, liveness flags).

`table[idx]` (PyTorch advanced indexing) and `table.index_select(0, idx)` return the same
rows, but on CPU advanced indexing costs several times more once the index is large:
picking 522 rows of a (1M, 64) float table took 0.074 ms against 0.016 ms, a (32, 522)
batch of them 3.4 against 0.47 ms (`scripts/bench_gather.py`; BENCHMARKS.md, "Where the
1M-item request's time went"). For a handful of rows either costs a few microseconds.
Indices must lie in [0, len(table)): unlike `table[idx]`, a negative index is an error
here, not a row counted from the end."""

from __future__ import annotations

import torch


def take_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(R, *rest) table, idx of any shape S -> (*S, *rest): table[idx], via index_select."""
    picked = table.index_select(0, idx.reshape(-1))
    return picked.view(*idx.shape, *table.shape[1:])
